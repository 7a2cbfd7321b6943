"""Skip where a system dependency is missing on a developer's machine, but fail under CI.

CI (``CI=true``, as GitHub Actions and most CI systems set it; ``.ci/run`` installs PostgreSQL and chromium first)
must not pass with the PostgreSQL or browser tests quietly skipped because an install failed.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when ``$CI`` is set to a true value (``true``, ``1``, ``yes``; any case)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """``pytest.skip(reason)``, or ``pytest.fail`` under CI: there a missing dependency is a broken install."""
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ.get('CI')}: a missing dependency fails the run instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)
