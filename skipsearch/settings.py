"""Every ``SKIPSEARCH_*`` environment variable, read in one place, once, at the CLI or service boundary.

``Settings.from_env()`` is called by the CLI (and by the Python entry points when no ``settings`` is passed); the
resulting value is handed down to the stages that need it. Nothing else in the package reads these variables, and
nothing reads them at import time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from skipsearch.errors import SkipsearchError

PREFIX = "SKIPSEARCH_"


class SettingsError(SkipsearchError, ValueError):
    """An environment variable with an unusable value; the message names it."""


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    text = environ.get(PREFIX + name, "").strip()
    return Path(text).expanduser() if text else None


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(PREFIX + name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{PREFIX}{name}={text!r} must be a positive integer")
    return value


def _positive_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(PREFIX + name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise SettingsError(f"{PREFIX}{name}={text!r} must be a positive number of seconds")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(PREFIX + name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Where skipsearch keeps things and how it behaves; the defaults are what an empty environment gives."""

    # Defaults expand ~ when a Settings is made, not at import: HOME may change in between (tests, services).
    home: Path = field(default_factory=lambda: Path("~/.skipsearch").expanduser())  # db, artifacts, exports
    storage: str | None = None  # database URL (SKIPSEARCH_STORAGE); None: sqlite in home
    artifacts: Path | None = None  # trial artifacts (SKIPSEARCH_ARTIFACTS); None: beside the SQLite file
    cache: Path = field(default_factory=lambda: Path("~/.cache/skipsearch").expanduser())  # checkpoints, refstats
    mnist: Path | None = None  # folder holding MNIST/raw (SKIPSEARCH_MNIST)
    studies: Path | None = None  # extra study-file folder searched first (SKIPSEARCH_STUDIES)
    models: Path | None = None  # extra model-file folder searched first (SKIPSEARCH_MODELS)
    fid_weights: Path | None = None  # FID Inception weights file (SKIPSEARCH_FID_WEIGHTS)
    fid_ref: Path | None = None  # EDM-style reference .npz (SKIPSEARCH_FID_REF)
    offline: bool = False  # never download (SKIPSEARCH_OFFLINE)
    heartbeat_seconds: int = 10  # trial heartbeat (SKIPSEARCH_HEARTBEAT_SECONDS)
    lock_timeout: float = 30.0  # seconds to wait for a SQLite file another process locked (SKIPSEARCH_LOCK_TIMEOUT)
    s2dm_steps: int = 200  # S²-DM fine-tuning steps per trial (SKIPSEARCH_S2DM_STEPS)
    s2dm_segments: int = 4  # proxy evaluations per fine-tuning trial (SKIPSEARCH_S2DM_SEGMENTS)
    s2dm_batch: int = 32  # fine-tuning batch (SKIPSEARCH_S2DM_BATCH)
    batch_calibration: bool = True  # measure the fastest sampling batch (SKIPSEARCH_BATCH_CALIBRATION=0: off)
    check_model: bool = True  # check-model before a study unless it says check = false (SKIPSEARCH_CHECK_MODEL=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (``os.environ`` unless given); a bad value is a one-line :class:`SettingsError`."""
        env = os.environ if environ is None else environ
        defaults = cls()
        settings = cls(
            home=_path(env, "HOME") or defaults.home,
            storage=env.get(PREFIX + "STORAGE", "").strip() or None,
            artifacts=_path(env, "ARTIFACTS"),
            cache=_path(env, "CACHE") or defaults.cache,
            mnist=_path(env, "MNIST"),
            studies=_path(env, "STUDIES"),
            models=_path(env, "MODELS"),
            fid_weights=_path(env, "FID_WEIGHTS"),
            fid_ref=_path(env, "FID_REF"),
            offline=_flag(env, "OFFLINE"),
            heartbeat_seconds=_positive_int(env, "HEARTBEAT_SECONDS", defaults.heartbeat_seconds),
            lock_timeout=_positive_seconds(env, "LOCK_TIMEOUT", defaults.lock_timeout),
            s2dm_steps=_positive_int(env, "S2DM_STEPS", defaults.s2dm_steps),
            s2dm_segments=_positive_int(env, "S2DM_SEGMENTS", defaults.s2dm_segments),
            s2dm_batch=_positive_int(env, "S2DM_BATCH", defaults.s2dm_batch),
            batch_calibration=env.get(PREFIX + "BATCH_CALIBRATION", "1").strip().lower() not in ("0", "false", "no",
                                                                                                 "off"),
            check_model=env.get(PREFIX + "CHECK_MODEL", "1").strip().lower() not in ("0", "false", "no", "off"),
        )
        for name in ("home", "cache", "artifacts"):
            path = getattr(settings, name)
            if path is not None and path.exists() and not path.is_dir():
                raise SettingsError(f"{PREFIX}{name.upper()}={path} is a file, not a folder")
        return settings

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in another process (Ray workers); never the storage URL,
        which travels as an argument because runtime_env variables show in Ray's dashboard."""
        env: dict[str, str] = {}
        defaults = Settings()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "storage" or value is None or value == getattr(defaults, f.name):
                continue
            env[PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env
