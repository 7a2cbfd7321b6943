"""optuna-dashboard on the same storage (and the trial artifacts), bound to 127.0.0.1 by default."""

from __future__ import annotations

from skipsearch.search.session import artifact_dir, optuna_storage
from skipsearch.settings import Settings


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, settings: Settings | None = None) -> None:
    """Blocking: serves until interrupted."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server
    settings = settings or Settings.from_env()
    folder = artifact_dir(storage_url, settings)
    folder.mkdir(parents=True, exist_ok=True)
    run_server(optuna_storage(storage_url, settings.heartbeat_seconds), host=host, port=port,
               artifact_store=FileSystemArtifactStore(str(folder)))
