"""How trials run: the study session and its loop (this process), the study-wide budget, batches of trials, Ray
workers, and Ctrl-C/SIGTERM during a run."""
