"""The searched studies of a storage: each run also keeps a ``<study>.review`` companion for verdicts."""

from __future__ import annotations

from typing import Any

import optuna

from skipsearch.store.records import is_review_study


def searched_study_names(storage: Any) -> list[str]:
    return [name for name in optuna.get_all_study_names(storage) if not is_review_study(name)]
