"""Training: one loop (``loop.train``) and the losses it runs (EDM, DDPM, S²-DM skip-step)."""
