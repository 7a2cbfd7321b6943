"""Stages 5-6, objective and search: study definitions (torch-free), spaces, trial kinds, the Optuna session."""
