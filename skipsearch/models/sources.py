"""Where model code and weights come from, below every adapter: the optional diffusers import, a user's factory
(``package.module:callable`` or ``file.py:callable``) and the content hashes that name weights.

Kept apart from :mod:`skipsearch.models.loading` so the pieces loading builds on (adapters, latent decoders) can use
them without importing it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from skipsearch.errors import MissingExtraError
from skipsearch.models.errors import ModelError


def require_diffusers() -> Any:
    """The diffusers module; a one-line :class:`MissingExtraError` (also an ImportError) when it cannot load."""
    try:
        import diffusers
    except ImportError as exc:
        install = "pip install skipsearch[diffusers] (in a checkout: pip install -e .[diffusers])"
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "diffusers":
            raise MissingExtraError(f"diffusers models need the optional extra: {install}") from None
        reason = " ".join(str(exc).split())  # installed, but broken (a version that does not fit this torch)
        raise MissingExtraError(f"diffusers is installed but cannot be imported ({type(exc).__name__}: {reason}); "
                                f"reinstall the optional extra: {install}") from None
    return diffusers


@contextmanager
def on_sys_path(folders: Sequence[Path]) -> Iterator[None]:
    """``folders`` at the front of ``sys.path`` for the block (a factory's sibling packages import); restored after.

    Modules imported meanwhile stay in ``sys.modules`` (classes built from them keep working)."""
    folders = [str(f) for f in folders if str(f) not in sys.path]
    saved = list(sys.path)
    sys.path[:0] = folders
    if folders:
        importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved


def import_callable(target: str, folder: Path | None = None) -> Callable[..., Any]:
    """``package.module:callable`` or ``file.py:callable`` (relative to ``folder``)."""
    module_part, _, attr = target.rpartition(":")
    if not module_part or not attr:
        raise ModelError(f"factory {target!r} must be 'package.module:callable' or 'file.py:callable'")
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).expanduser()
            path = path if path.is_absolute() or folder is None else folder / path
            if not path.is_file():
                raise ModelError(f"factory file not found: {path}")
            name = f"skipsearch_factory_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module  # dataclasses and pickling look modules up by name
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_part)
    except ModelError:
        raise
    except Exception as exc:  # ImportError, SyntaxError, whatever the user's module raises at import
        raise ModelError(f"cannot import {module_part!r} for factory {target!r}: {type(exc).__name__}: {exc}") \
            from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"factory {target!r}: {module_part} has no callable {attr!r}")
    return factory


def state_dict_sha256(module: nn.Module) -> str:
    """A content hash of a module's tensors (for models that did not come from a file)."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def diffusers_weights_sha(folder: Path) -> str | None:
    """The sha256 of a diffusers model folder's weights file (None when it has none)."""
    from skipsearch.models.checkpoints import file_sha256
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None
