"""Every command, every option, a bad value: one line on stderr, exit code 2, no traceback, nothing written.

Every case runs against one real database in ``$SKIPSEARCH_HOME`` (a small Optuna study and a best row) whose bytes
must be the same after the case as before it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.cli import click_command

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
# Values past what the machine or the code can take (counts larger than memory, NFEs, seeds, noise levels,
# special files that would block or never end): refused in one line before any work too.
HUGE, HUGE_SEED = "99999999999", "99999999999999999999999"
EXTREME = {
    ("sample", "n"): [HUGE], ("sample", "nfe"): [HUGE], ("sample", "scale"): ["100000"],
    ("sample", "schedule"): ["/dev/null"], ("evaluate", "schedule"): ["/dev/null"], ("evaluate", "n"): [HUGE],
    ("evaluate", "nfe"): [HUGE], ("skip-points", "n"): [HUGE], ("skip-points", "seed"): [HUGE_SEED, "-1"],
    ("skip-points", "sigma"): ["1e308"], ("optimize", "nfe"): [HUGE], ("optimize", "nfes"): ["9," + HUGE],
    ("optimize", "study"): ["/dev/null"], ("proxy-check", "n"): [HUGE], ("train", "lr"): ["inf", "nan"],
    ("train", "seed"): [HUGE_SEED],
}
ARGS = {"report": ["some-study"]}
FILTERS = {("best", "model")}  # a filter: an unknown model name just matches no stored row
MARKUP = "[red]m[/bold]"  # a folder name that rich would read as markup


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """``$SKIPSEARCH_HOME`` holding a real database at the default path: a tiny Optuna study and a best row."""
    import optuna

    from skipsearch.schedule import SkipSchedule
    from skipsearch.settings import Settings
    from skipsearch.store import BestStore, Validation, default_storage_url
    folder = tmp_path_factory.mktemp("home")
    url = default_storage_url(Settings(home=folder))
    assert url == f"sqlite:///{folder.resolve() / 'skipsearch.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="tiny")
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    with BestStore(url) as store:
        store.record(Validation(model_name="edm", weights_sha256="a" * 64, sampler="heun", nfe=9, metric="fid",
                                value=1.0, n=2000, seeds="0-1999", extractor="mnist-features",
                                extractor_sha256="b" * 64, schedule_json=SkipSchedule.constant(1.0, 3).to_json(),
                                space="linear", study_name="tiny", trial_number=0, proxy_value=2.0))
    storage.engine.dispose()  # the last connection closed checkpoints the WAL into the file
    return folder


def _digest(folder: Path) -> str:
    """The database's bytes, its write-ahead log's included (a write may sit there until a checkpoint)."""
    db = folder / "skipsearch.db"
    wal = folder / "skipsearch.db-wal"
    return hashlib.sha256(db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).hexdigest()


@pytest.fixture()
def env(home, tmp_path, monkeypatch):
    """SKIPSEARCH_HOME = the shared database's folder, offline; asserts the database is unchanged afterwards."""
    monkeypatch.setenv("SKIPSEARCH_HOME", str(home))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    (tmp_path / "a-file").write_text("not a folder")
    before = _digest(home)
    yield tmp_path
    assert _digest(home) == before, "the database changed"


def _cases():
    group = click_command()
    for name, command in sorted(group.commands.items()):
        for param in command.params:
            if not getattr(param, "opts", None) or not param.opts[0].startswith("--") and param.name != "output":
                continue
            flag = param.opts[0]
            if param.name in FREE or getattr(param, "is_flag", False) or (name, param.name) in FILTERS:
                values = []
            elif param.name == "output":
                values = [OUTPUT[name]] if name in OUTPUT else []
            elif param.name == "export" and name in EXPORT:
                values = [EXPORT[name]]
            elif param.name in BAD_TEXT:
                values = [BAD_TEXT[param.name]]
            else:
                values = ["x"]  # numbers: a word
            if param.name in COUNTS:
                values = ["x", "0"]
            for value in [*values, *EXTREME.get((name, param.name), [])]:
                yield pytest.param(name, flag, value, id=f"{name}{flag}={value.replace('{tmp}', 'TMP')}")


@pytest.mark.parametrize(("command", "flag", "value"), list(_cases()))
def test_bad_value_is_one_line(command, flag, value, env, capsys):
    tmp_path = env
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(capsys, command, *ARGS.get(command, []), flag, value.replace("{tmp}", str(tmp_path)))
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside the inputs


def _is_path(param) -> bool:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is Path or param.name in ("schedule", "study", "output", "export")


def _path_cases():
    """Every path option's bad value again, in a folder whose name is markup."""
    for case in _cases():
        command, flag, value = case.values
        param = next(p for p in click_command().commands[command].params if flag in p.opts)
        if param.name == "storage":  # a URL, but it names a file
            value = "sqlite:///{tmp}/" + MARKUP + "/missing/skipsearch.db"
        elif param.name == "model":  # a name, or a model file
            value = "{tmp}/" + MARKUP + "/missing.toml"
        elif _is_path(param) and "{tmp}" in value:
            value = value.replace("{tmp}", "{tmp}/" + MARKUP)
        else:
            continue
        yield pytest.param(command, flag, value, id=f"{command}{flag}={value.replace('{tmp}', 'TMP')}")


def test_every_path_option_is_walked():
    walked = {(c.values[0], c.values[1]) for c in _path_cases()}
    assert len(walked) >= 15 and ("sample", "--schedule") in walked and ("optimize", "--study") in walked


@pytest.mark.parametrize(("command", "flag", "value"), list(_path_cases()))
def test_markup_in_paths_is_printed_literally(command, flag, value, env, capsys):
    tmp_path = env
    (tmp_path / MARKUP).mkdir(parents=True)
    (tmp_path / MARKUP / "a-file").write_text("not a folder")
    (tmp_path / MARKUP / "images.txt").write_text("not an npz")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = run_cli(capsys, command, *ARGS.get(command, []), flag, value.replace("{tmp}", str(tmp_path)))
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result, MARKUP)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_every_command_is_walked():
    walked = {case.values[0] for case in _cases()}
    commands = set(click_command().commands) - {"models", "studies"}  # models, studies: only free or no options
    assert commands <= walked


BAD_ENV = [("SKIPSEARCH_HEARTBEAT_SECONDS", "abc"), ("SKIPSEARCH_HEARTBEAT_SECONDS", "0"),
           ("SKIPSEARCH_S2DM_STEPS", "-1"), ("SKIPSEARCH_S2DM_SEGMENTS", "0"), ("SKIPSEARCH_S2DM_BATCH", "x"),
           ("SKIPSEARCH_HOME", "{tmp}/a-file"), ("SKIPSEARCH_ARTIFACTS", "{tmp}/a-file"),
           ("SKIPSEARCH_CACHE", "{tmp}/a-file"), ("SKIPSEARCH_STORAGE", "nosuchdialect://x"),
           ("SKIPSEARCH_HOME", "{tmp}/" + MARKUP + "/a-file")]


# sample opens no storage: a bad SKIPSEARCH_STORAGE is not its concern.
ENV_CASES = [pytest.param(variable, value, command, id=f"{command}-{variable}={value}")
             for command in ("best", "optimize", "sample") for variable, value in BAD_ENV
             if not (variable == "SKIPSEARCH_STORAGE" and command == "sample")]


@pytest.mark.parametrize(("variable", "value", "command"), ENV_CASES)
def test_bad_environment_is_one_line(variable, value, command, env, capsys, monkeypatch):
    (env / MARKUP).mkdir(parents=True)
    (env / MARKUP / "a-file").write_text("not a folder")
    monkeypatch.setenv(variable, value.replace("{tmp}", str(env)))
    args = ["--trials", "1"] if command == "optimize" else []
    result = run_cli(capsys, command, *args)
    assert result.code == 2, (result.code, result.err[-2000:])
    expected = "nosuchdialect" if variable == "SKIPSEARCH_STORAGE" else variable
    assert_one_line_error(result, expected, *([MARKUP] if MARKUP in value else []))


def test_markup_in_user_text_is_printed_literally(env, capsys):
    result = run_cli(capsys, "sample", "--schedule", str(env / "[bold]x[/bold].json"))
    assert_one_line_error(result, "[bold]x[/bold].json")


# Study files that are valid TOML but not valid studies: refused before the model or the database are touched.
BAD_STUDIES = {
    "final_n-word": '[search]\nfinal_n = "x"\n', "seed-word": '[search]\nseed = "x"\n',
    "reduction_factor-word": '[search]\nreduction_factor = "x"\n', "seed-negative": "[search]\nseed = -1\n",
    "reduction_factor-1": "[search]\nreduction_factor = 1\n", "final_n-float": "[search]\nfinal_n = 2000.0\n",
    "study-string": 'study = "x"\n', "space-array": "space = [1, 2]\n", "space-int": "space = 3\n",
    "proxy-bool": "proxy = true\n", "sampler_options-int": "sampler_options = 3\n",
    "nfe-float": "[study]\nnfe = 9.0\n", "trust_pickle-word": '[study]\ntrust_pickle = "yes"\n',
    "model-int": "[study]\nmodel = 3\n", "calibrate-word": '[space]\ncalibrate = "no"\n',
    "rho_min-word": '[space]\nrho_min = "x"\n', "num_intervals-float": "[space]\nnum_intervals = 2.5\n",
    "rungs-int": "[proxy]\nrungs = 250\n", "rungs-words": '[proxy]\nrungs = [250, "x"]\n',
    "crn-word": '[proxy]\ncommon_random_numbers = "yes"\n', "batch_size-zero": "[proxy]\nbatch_size = 0\n",
    "sampler_option-bogus": "[sampler_options]\nbogus = 1\n",
    "sampler_option-rho-word": '[sampler_options]\nrho = "7"\n',
    "sampler_option-spacing": '[sampler_options]\nspacing = "nope"\n',
    "eta-for-heun": "[sampler_options]\neta = 0.5\n",
}


@pytest.mark.parametrize("name", sorted(BAD_STUDIES))
def test_bad_study_file_is_one_line(name, env, capsys):
    study = env / MARKUP / f"{name}.toml"
    study.parent.mkdir(parents=True)
    study.write_text(BAD_STUDIES[name])
    before = sorted(str(p) for p in env.rglob("*"))
    result = run_cli(capsys, "optimize", "--study", str(study), "--trials", "1")
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result, str(study))
    assert sorted(str(p) for p in env.rglob("*")) == before


def test_deeply_nested_schedule_is_one_line(env, capsys):
    deep = env / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = run_cli(capsys, "sample", "--schedule", str(deep), "--n", "1")
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result, str(deep))


def test_reads_leave_the_database_unchanged(env, capsys):
    # The control for the cases around: the shared database is readable, and reading it changes no byte.
    assert run_cli(capsys, "best").code == 0
    result = run_cli(capsys, "export", "-o", str(env / "out.json"), "--model", "edm", "--sampler", "heun",
                     "--nfe", "9")
    assert result.code == 0, result.err
    assert (env / "out.json").is_file()


@pytest.mark.parametrize("args", [["optimize", "--trials", "1"], ["best"],
                                  ["export", "-o", "{tmp}/out.json", "--model", "edm", "--sampler", "heun",
                                   "--nfe", "9"]], ids=["optimize", "best", "export"])
def test_read_only_database_is_one_line(args, home, env, capsys):
    # Root ignores file modes, so the database is opened read-only by SQLite itself (a URI filename).
    copy = env / "ro" / "skipsearch.db"
    copy.parent.mkdir()
    shutil.copy(home / "skipsearch.db", copy)
    digest = _digest(copy.parent)
    url = f"sqlite:///file:{copy}?mode=ro&uri=true"
    result = run_cli(capsys, *[a.replace("{tmp}", str(env)) for a in args], "--storage", url)
    assert result.code == 2, (result.code, result.err[-2000:])
    assert_one_line_error(result, "read-only")
    assert _digest(copy.parent) == digest
    assert not (env / "out.json").exists()


@pytest.mark.parametrize("command", sorted(click_command().commands))
def test_help_of_every_command(command, capsys):
    result = run_cli(capsys, command, "--help")
    assert result.code == 0 and "Traceback" not in result.err
    if command == "optimize":
        assert "[heun|euler|dpmpp_2m|unipc|ddim|onestep|multistep]" in result.out
        assert "successive-halving" in result.out


@pytest.mark.parametrize("name", ["/elsewhere/abs", "../up", "a b", "[bold]x[/bold]", ""])
def test_study_names_cannot_be_paths(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = run_cli(capsys, "optimize", "--study-name", name, "--trials", "1")
    assert_one_line_error(result, "study name")
    assert not (tmp_path / "skipsearch.db").exists()  # refused before the model or the database is touched
