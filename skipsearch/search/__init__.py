"""What a trial is: study definitions (torch-free), search spaces, the objective that scores a trial, the rho
calibration, Optuna samplers and pruners, and the validation of the winners. How trials run is
:mod:`skipsearch.execution`."""
