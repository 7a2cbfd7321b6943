"""optuna-dashboard on the same storage (and the trial artifacts), bound to 127.0.0.1 by default."""

from __future__ import annotations

from skipsearch.search.session import artifact_dir, optuna_storage


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Blocking: serves until interrupted."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server
    folder = artifact_dir(storage_url)
    folder.mkdir(parents=True, exist_ok=True)
    run_server(optuna_storage(storage_url), host=host, port=port,
               artifact_store=FileSystemArtifactStore(str(folder)))
