"""Ranges a schedule's numbers must lie in: plain constants, so torch-free code (study definitions) can share them."""

from __future__ import annotations

import math

RHO_RANGE = (0.0, 2.0)  # skip coefficients; 1 leaves a skip tensor as trained
EPS_SCALE_RANGE = (0.5, 2.0)  # epsilon scaling of the model output; 1 = off
# One interval covering every sigma: the schedule is layer-wise only.
LAYER_WISE_BOUNDS: tuple[float, ...] = (math.inf, 0.0)
# Denoiser calls per image: far above the budgets samplers are run with (a DDPM's full chain is 1000), far below
# what exhausts memory (the grid of steps is allocated whole) or a lifetime.
MAX_NFE = 10_000

__all__ = ["EPS_SCALE_RANGE", "LAYER_WISE_BOUNDS", "MAX_NFE", "RHO_RANGE"]
