"""Test helpers shared by the test packages (real CLI runs, a private PostgreSQL server)."""
