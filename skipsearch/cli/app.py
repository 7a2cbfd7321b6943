"""The ``skipsearch`` command line (typer + rich): the app, the entry point, and how errors end.

Environment variables are read once, here (``Settings.from_env()`` in the app callback), and handed to the
stages. Every user error (:class:`skipsearch.errors.SkipsearchError`, a file-system error, a bad flag value) ends
as one line on stderr and exit code 2; anything else is a bug and keeps its traceback. Flags whose values come
from a registry are checked against it (``CHOICES``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from skipsearch.errors import SkipsearchError, Terminated
from skipsearch.settings import Settings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="Find the best Skip-Tuning schedule for a pretrained diffusion UNet.")


console = Console(stderr=True, highlight=False)


out = Console(highlight=False)


def _error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    hint = getattr(exc, "hint", "")  # NFEError: the samplers that can spend the NFE
    return text + (hint if isinstance(hint, str) else "")


# Plain words for the errno of a file-system error (Python's own say "[Errno 21] Is a directory: 'x'").


_OS_REASONS = {
    errno.EISDIR: "is a directory, expected a file", errno.ENOTDIR: "a part of the path is not a directory",
    errno.ENOENT: "no such file or directory", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EEXIST: "already exists",
    errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the name is too long",
}


def _os_error_line(exc: OSError) -> str:
    """``--flag PATH: reason`` for a file-system error on a path the command line gave, else ``PATH: reason``."""
    if exc.filename is None or isinstance(exc, SkipsearchError):
        return _error_line(exc)
    path = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else str(exc.filename)
    reason = _OS_REASONS.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()
    return _error_line(f"{_flag_of(path) or ''}{path}: {reason}")


def _flag_of(path: str) -> str | None:
    """``'--flag '`` when the command line gave ``path`` to a flag (``--flag PATH`` or ``--flag=PATH``)."""
    def same(value: str) -> bool:
        return os.path.normpath(value) == os.path.normpath(path)

    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("-") and "=" in arg and same(arg.split("=", 1)[1]):
            return arg.split("=", 1)[0] + " "
        if i > 0 and args[i - 1].startswith("-") and same(arg):
            return args[i - 1] + " "
    return None


_sigterms: list[int] = []  # typer turns a KeyboardInterrupt inside a command into exit code 130: main looks here


def _raise_terminated(signum, _frame) -> None:
    _sigterms.append(signum)
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM (a service manager, ``kill``, a batch scheduler) raises :class:`Terminated` in the main thread."""
    _sigterms.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    """Console entry point."""
    try:
        with _sigterm_unwinds():
            code = click_command().main(prog_name="skipsearch", standalone_mode=False)
    except Terminated:
        console.print("[yellow]terminated (SIGTERM)[/yellow]")
        sys.exit(143)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Abort:
        console.print("[yellow]aborted[/yellow]")
        sys.exit(130)
    except typer.TyperException as exc:  # bad flag values, missing arguments: the parser's message, one line
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "skipsearch"
        console.print(f"[red]error:[/red] {escape(_error_line(exc.format_message()))} "
                      f"(see '{escape(command)} --help')", soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # file-system problems: the path (and the flag that gave it) and why, one line
        console.print(f"[red]error:[/red] {escape(_os_error_line(exc))}", soft_wrap=True)
        sys.exit(2)
    except SkipsearchError as exc:  # user errors: one line, no traceback
        console.print(f"[red]error:[/red] {escape(_error_line(exc))}", soft_wrap=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as exc:  # an allocation the size checks did not foresee: one line too
        from skipsearch.inputs import out_of_memory_line
        line = out_of_memory_line(exc)
        if line is None:
            raise
        console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
        sys.exit(2)
    if _sigterms:  # a SIGTERM the command unwound from (typer returns it as 130, optimize as "interrupted")
        console.print("[yellow]terminated (SIGTERM)[/yellow]")
        sys.exit(143)
    sys.exit(code if isinstance(code, int) else 0)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Find the best Skip-Tuning schedule for a pretrained diffusion UNet."""
    ctx.obj = Settings.from_env()


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()


class RegistryChoice:
    """A flag whose value must be one of a registry's names, read on first use (help, validation)."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self._names = names
        self._cached: list[str] | None = None

    @property
    def choices(self) -> list[str]:
        if self._cached is None:
            self._cached = list(self._names())
        return self._cached

    def metavar(self, ctx: Any = None) -> str:
        return "[" + "|".join(self.choices) + "]"

    def __call__(self, _ctx: Any, param: Any, value: Any) -> Any:
        """typer's option callback: None (not given) passes; anything else must be a choice."""
        if value is not None and value not in self.choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(self.choices)}", param=param)
        return value


def _sampler_names() -> list[str]:
    from skipsearch.sampling.samplers import SAMPLERS
    return SAMPLERS.names()


def _space_names() -> list[str]:
    from skipsearch.search.spaces import space_names
    return space_names()


def _extractor_names() -> list[str]:
    from skipsearch.proxy.extractors import extractor_names
    return extractor_names()


def _dataset_names() -> list[str]:
    from skipsearch.proxy.stats import DATASETS
    return DATASETS.names()


def _optuna_sampler_names() -> list[str]:
    from skipsearch.search.strategies import OPTUNA_SAMPLERS
    return OPTUNA_SAMPLERS.names()


def _pruner_names() -> list[str]:
    from skipsearch.search.strategies import PRUNERS
    return PRUNERS.names()


def _metric_names() -> list[str]:
    from skipsearch.proxy.config import METRICS
    return METRICS.names()


# (command, parameter) -> its choices; put on the click command in main(), so that help lists them and a bad value is
# click's one-line "invalid choice" error.


CHOICES: dict[tuple[str, str], Callable[[], list[str]]] = {
    **{(command, "sampler"): _sampler_names
       for command in ("sample", "evaluate", "optimize", "best", "export", "frontier")},
    ("optimize", "space"): _space_names, ("optimize", "optuna_sampler"): _optuna_sampler_names,
    ("optimize", "pruner"): _pruner_names, ("optimize", "metric"): _metric_names,
    ("evaluate", "extractor"): _extractor_names, ("refstats", "extractor"): _extractor_names,
    ("proxy-check", "extractor"): _extractor_names,
    ("optimize", "extractor"): _extractor_names,  # --dataset is a spec (folder:DIR ...), not only a name
    ("refstats", "split"): lambda: ["train", "test"], ("train", "kind"): lambda: ["edm", "ddpm"],
    **{(command, "fmt"): lambda: ["table", "json", "csv"] for command in ("best", "studies", "models")},
}


def click_command() -> Any:
    """The app as a click-style command group, with the registry choices checked and shown in help."""
    group = typer.main.get_command(app)
    for name, command in getattr(group, "commands", {}).items():
        for param in command.params:
            names = CHOICES.get((name, param.name or ""))
            if names is not None:
                choice = RegistryChoice(names)
                param.callback = choice
                param.display_type_rich = choice.metavar  # help lists the names (read when help is shown)
    return group
