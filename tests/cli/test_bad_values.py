"""Every command, every option, a bad value: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.cli import _click_command

# Values that must be refused for options whose type alone (str, path) cannot tell; each fails before any work.
BAD_TEXT = {
    "model": "no-such-model", "checkpoint": "{tmp}/missing.safetensors", "device": "tpu",
    "schedule": "{tmp}/missing.json", "rho": "a:b", "npz": "{tmp}/images.txt", "precision": "fp8",
    "study": "{tmp}/missing.toml", "storage": "nosuchdialect://x", "rungs": "10,x", "metric": "nope",
    "fid_weights": "{tmp}/missing.pth", "ref": "{tmp}/missing.npz", "data": "{tmp}/no-mnist-here",
    "host": "256.1.1.1", "sampler": "plms", "space": "nope", "optuna_sampler": "nope", "pruner": "nope",
    "extractor": "nope", "dataset": "cifar1000", "split": "val", "kind": "vae",
}
OUTPUT = {"sample": "{tmp}/grid.xyz", "export": "{tmp}", "report": "{tmp}/a-file", "train": "{tmp}/a-file",
          "refstats": "{tmp}/no/such/dir/stats.npz"}
EXPORT = {"optimize": "{tmp}"}  # --export: a folder is not a file name
# Counts for which 0 or a negative number is as wrong as a word.
COUNTS = {"n", "batch_size", "scale", "steps", "threads", "trials", "workers", "nfe", "final_n", "port"}
# Options whose every value is valid (a name, a seed offset, a flag); nothing to refuse.
FREE = {"study_name", "seed", "sigma", "lr", "top_k", "rho_min", "rho_max", "ray_address", "refresh",
        "trust_pickle", "help", "study_name_arg"}
ARGS = {"report": ["some-study"]}
FILTERS = {("best", "model")}  # a filter: an unknown model name just matches no stored row


def _cases():
    group = _click_command()
    for name, command in sorted(group.commands.items()):
        for param in command.params:
            if not getattr(param, "opts", None) or not param.opts[0].startswith("--") and param.name != "output":
                continue
            if param.name in FREE or getattr(param, "is_flag", False) or (name, param.name) in FILTERS:
                continue
            flag = param.opts[0]
            if param.name == "output":
                values = [OUTPUT[name]] if name in OUTPUT else []
            elif param.name == "export" and name in EXPORT:
                values = [EXPORT[name]]
            elif param.name in BAD_TEXT:
                values = [BAD_TEXT[param.name]]
            else:
                values = ["x"]  # numbers: a word
            if param.name in COUNTS:
                values = ["x", "0"]
            for value in values:
                yield pytest.param(name, flag, value, id=f"{name}{flag}={value.replace('{tmp}', 'TMP')}")


@pytest.mark.parametrize(("command", "flag", "value"), list(_cases()))
def test_bad_value_is_one_line(command, flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    (tmp_path / "a-file").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(capsys, command, *ARGS.get(command, []), flag, value.replace("{tmp}", str(tmp_path)))
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result)
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "home")
    assert after == [p for p in before if p != "home"]  # nothing written beside the inputs


def test_every_command_is_walked():
    walked = {case.values[0] for case in _cases()}
    commands = set(_click_command().commands) - {"models", "studies"}  # models, studies: only free or no options
    assert commands <= walked


@pytest.mark.parametrize("variable,value", [("SKIPSEARCH_HEARTBEAT_SECONDS", "abc"), ("SKIPSEARCH_S2DM_STEPS", "-1"),
                                            ("SKIPSEARCH_HOME", "{tmp}/a-file")])
def test_bad_environment_is_one_line(variable, value, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(variable, value.replace("{tmp}", str(tmp_path)))
    result = run_cli(capsys, "best")
    assert result.code == 2
    assert_one_line_error(result, variable)


def test_markup_in_user_text_is_printed_literally(tmp_path, capsys):
    result = run_cli(capsys, "sample", "--schedule", str(tmp_path / "[bold]x[/bold].json"))
    assert_one_line_error(result, "[bold]x[/bold].json")


@pytest.mark.parametrize("command", sorted(_click_command().commands))
def test_help_of_every_command(command, capsys):
    result = run_cli(capsys, command, "--help")
    assert result.code == 0 and "Traceback" not in result.err
    if command == "optimize":
        assert "[heun|euler|dpmpp_2m|unipc|ddim]" in result.out and "successive-halving" in result.out


@pytest.mark.parametrize("name", ["/elsewhere/abs", "../up", "a b", "[bold]x[/bold]", ""])
def test_study_names_cannot_be_paths(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = run_cli(capsys, "optimize", "--study-name", name, "--trials", "1")
    assert_one_line_error(result, "study name")
    assert not (tmp_path / "skipsearch.db").exists()  # refused before the model or the database is touched
