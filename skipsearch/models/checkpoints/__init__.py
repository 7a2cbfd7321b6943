"""Checkpoints: EDM ``.pkl`` (restricted unpickler), skipsearch safetensors, presets and their download."""

from skipsearch.models.checkpoints.edm_pickle import (
    EasyDict,
    ModuleRecord,
    load_edm_pickle,
    network_from_record,
    read_edm_pickle,
)
from skipsearch.models.checkpoints.errors import CheckpointError, UntrustedPickleError
from skipsearch.models.checkpoints.networks import CONFIG_ATTR, create_network, network_config
from skipsearch.models.checkpoints.presets import (
    PRESETS,
    Preset,
    cached_checkpoint_path,
    default_cache_dir,
    download_file,
    resolve_checkpoint,
)
from skipsearch.models.checkpoints.safetensors_io import (
    METADATA_DTYPE,
    METADATA_FORMAT,
    METADATA_NETWORK,
    file_sha256,
    load_checkpoint,
    load_network,
    load_torch_state_dict,
    save_network,
)

__all__ = [
    "CONFIG_ATTR", "METADATA_DTYPE", "METADATA_FORMAT", "METADATA_NETWORK", "PRESETS", "CheckpointError", "EasyDict",
    "ModuleRecord", "Preset", "UntrustedPickleError", "cached_checkpoint_path", "create_network", "default_cache_dir",
    "download_file", "file_sha256", "load_checkpoint", "load_edm_pickle", "load_network", "load_torch_state_dict",
    "network_config", "network_from_record", "read_edm_pickle", "resolve_checkpoint", "save_network",
]
