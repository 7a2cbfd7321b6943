"""A torch file whose unpickling would run a command: what a weights loader must refuse without running it."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def code_running_pickle(folder: Path) -> tuple[Path, Path]:
    """(``folder/evil.pth``, the file its command would create): the second must never exist."""
    marker = folder / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = folder / "evil.pth"
    torch.save({"x": Evil()}, evil)
    return evil, marker
