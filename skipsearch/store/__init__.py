"""Stage 8, the store: skipsearch's SQL tables beside Optuna's (the validated best per model, sampler, NFE)."""
