"""Stage 7, execution: trials in this process (``local``) or on Ray worker actors (``ray``)."""
