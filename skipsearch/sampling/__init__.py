"""Stage 3, sampling: exact-NFE samplers over ``D(x, sigma)``, the sigma grids, per-image noise, ``generate``."""
