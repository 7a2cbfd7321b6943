"""``python -m skipsearch.cli``."""

from skipsearch.cli import main

main()
