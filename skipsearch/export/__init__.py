"""Stage 9, export and review: schedule JSON, reports, image grids, optuna-dashboard."""
