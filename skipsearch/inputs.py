"""Limits on what user input may make skipsearch read or allocate: bad input is a one-line error, never a hang or a
process the kernel kills for memory.

* :func:`read_user_text` / :func:`read_user_toml`: every user file read as text (schedule JSON, study and model
  TOML, configs beside weights) is a regular file of at most :data:`MAX_USER_FILE_BYTES`; a FIFO (which would block
  forever), a device (``/dev/zero`` reads until memory runs out) or a folder is refused before it is read.
* :func:`check_memory`: a request whose smallest possible footprint exceeds the memory this process can have
  (``MemAvailable``, the cgroup limit, ``RLIMIT_AS``) is refused before anything is allocated. The estimates are
  lower bounds, so a request that can run is never refused.
* :func:`out_of_memory_line`: the CLI's last resort for an allocation that fails anyway.

No torch, no numpy: study definitions and the CLI's flag checks use it.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from pathlib import Path
from typing import Any

import tomllib

from skipsearch.errors import SkipsearchError

MAX_USER_FILE_BYTES = 16 * 2**20  # far above any schedule, study or model file; far below any machine's memory


class UserFileError(SkipsearchError, ValueError):
    """A user file that is not a readable, regular text file of a sensible size."""


class ResourceLimitError(SkipsearchError, ValueError):
    """A request (images, pixels, steps) larger than this machine can hold."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_user_text(path: str | os.PathLike, what: str, *, error: type[Exception] = UserFileError,
                   limit: int = MAX_USER_FILE_BYTES) -> str:
    """The UTF-8 text of the user's file ``path``; ``error`` (one line naming ``what`` and the path) if it is missing,
    not a regular file, larger than ``limit`` bytes or not UTF-8; IsADirectoryError for a folder."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):  # the CLI names the flag that gave a path of an OSError
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is a {_kind(mode)}, not a regular file; give a {what}")
    try:
        # O_NONBLOCK: should a FIFO replace the file after the stat, the open returns at once and fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    with open(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is a {_kind(info.st_mode)}, not a regular file; give a {what}")
        if info.st_size > limit:
            raise error(f"{path}: {what} is {_size(info.st_size)}; a {what} may be at most {_size(limit)}")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{path}: {what} is larger than {_size(limit)}; a {what} may be at most {_size(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_user_toml(path: str | os.PathLike, what: str, *, error: type[Exception] = UserFileError) -> dict[str, Any]:
    """The parsed TOML of the user's file ``path`` (read by :func:`read_user_text`); ``error`` for bad TOML, nesting
    too deep for the parser included."""
    text = read_user_text(path, what, error=error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise error(f"{path}: not valid TOML (arrays or tables nested too deeply to be a {what})") from None


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process could allocate at most now: the least of MemAvailable, the cgroup's memory limit and the
    address-space limit; None where none of them can be read."""
    bounds = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                bounds.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    if not bounds:
        try:
            bounds.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read_int(limit_file)
        if value is not None and value < 2**60:  # cgroup v1 writes "no limit" as a huge number
            bounds.append(value)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        bounds.append(soft)
    return min(bounds) if bounds else None


def check_memory(nbytes: int, what: str, hint: str) -> None:
    """ResourceLimitError if ``what`` needs at least ``nbytes`` (a lower bound) and the machine has less."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise ResourceLimitError(f"{what} needs at least {_size(nbytes)} of memory, but only {_size(available)} is "
                                 f"available; {hint}")


def out_of_memory_line(exc: BaseException) -> str | None:
    """One line for an allocation that failed (MemoryError, torch's CPU or CUDA allocator), else None."""
    if isinstance(exc, MemoryError):
        return "out of memory; ask for less (fewer images, a smaller --batch-size or --nfe)"
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and (
            "can't allocate memory" in text or "out of memory" in text.lower())):
        start = text.find("you tried to allocate")
        detail = f" ({text[start:].split('. ')[0].rstrip('.')})" if start >= 0 else ""
        return f"out of memory{detail}; ask for less (fewer images, a smaller --batch-size or --nfe)"
    return None
