"""The ``skipsearch`` command line: ``app`` (typer) and ``main`` (the console entry point).

One module per group of commands, each registering its commands on the app when imported: ``models`` (models,
skip-points, sample, train, check-model), ``scoring`` (evaluate, refstats, proxy-check), ``study`` (optimize),
``results`` (best, export, studies, report, dashboard), ``frontier``; ``options`` and ``recipe`` hold what they
share. Logic lives in the stages; these modules turn flags into calls.
"""

from skipsearch.cli import frontier, models, results, scoring, study  # noqa: F401 - registers the commands
from skipsearch.cli.app import app, click_command, main

__all__ = ["app", "click_command", "main"]
