"""Checkpoints: EDM-layout pickles read without NVlabs code, safetensors, presets and skip tables, download."""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from skipsearch.models import edm_networks
from skipsearch.models.checkpoints import (
    CONFIG_ATTR,
    PRESETS,
    CheckpointError,
    ModuleRecord,
    Preset,
    UntrustedPickleError,
    cached_checkpoint_path,
    create_network,
    default_cache_dir,
    download_file,
    file_sha256,
    load_checkpoint,
    load_edm_pickle,
    load_network,
    network_config,
    read_edm_pickle,
    resolve_checkpoint,
    save_network,
)
from skipsearch.models.edm_networks import build_network

# ----------------------------------------------------------------------------------------------------------------
# Pickles with the official layout, made from our networks.

FAKE_MODULE_SRC = "# stand-in for the networks.py source that official snapshots embed; never executed\n"

_SONG = dict(img_resolution=16, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
             num_blocks=1, attn_resolutions=[8], dropout=0.13)
_NCSNPP = dict(_SONG, embedding_type="fourier", encoder_type="residual", decoder_type="standard",
               resample_filter=[1, 3, 3, 1], channel_mult_noise=2)
_ADM = dict(img_resolution=16, img_channels=3, model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[8], dropout=0.1)

SMALL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpmpp-edm": ("EDMPrecond", dict(_SONG, label_dim=4, augment_dim=9, embedding_type="positional",
                                      encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
                                      channel_mult_noise=1)),
    "ddpmpp-vp": ("VPPrecond", dict(_SONG, label_dim=0)),
    "ncsnpp-edm": ("EDMPrecond", dict(_NCSNPP, label_dim=0)),
    "ncsnpp-ve": ("VEPrecond", dict(_NCSNPP, label_dim=0)),
    "adm-edm": ("EDMPrecond", dict(_ADM, label_dim=5, use_fp16=True)),
    "adm-iddpm": ("iDDPMPrecond", dict(_ADM, label_dim=0)),
}


def small_network(key: str, seed: int = 0) -> edm_networks._Precond:
    """A small network whose parameters are all random (the zero/one inits would hide mix-ups)."""
    precond, kwargs = SMALL_CONFIGS[key]
    torch.manual_seed(seed)
    net = create_network(precond, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.eval().requires_grad_(False)


class _EdmLayoutPickler(pickle.Pickler):
    """Pickles our modules the way ``torch_utils.persistence`` pickles EDM's: ``(_reconstruct_persistent_obj,
    (meta,))``; torch containers (ModuleDict) stay ordinary, as in the official files."""

    def __init__(self, file: io.BytesIO, protocol: int, reconstruct: Any, version: int, class_names: dict[str, str]):
        super().__init__(file, protocol=protocol)
        self.reconstruct, self.version, self.class_names = reconstruct, version, class_names

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module) and type(obj).__module__ == edm_networks.__name__:
            state = dict(obj.__dict__)
            config = state.pop(CONFIG_ATTR, None)
            # The persistence decorator records constructor arguments; only the outer network's are used.
            state["_init_args"] = ()
            state["_init_kwargs"] = dict(config["kwargs"]) if config else {}
            name = type(obj).__name__
            meta = dict(type="class", version=self.version, module_src=FAKE_MODULE_SRC,
                        class_name=self.class_names.get(name, name), state=state)
            return self.reconstruct, (meta,)
        return NotImplemented


def edm_layout_pickle(ema: nn.Module | None, protocol: int = pickle.DEFAULT_PROTOCOL, version: int = 6,
                      class_names: dict[str, str] | None = None, **extra: Any) -> bytes:
    """``pickle`` of ``dict(ema=..., loss_fn=None, augment_pipe=None, dataset_kwargs={})`` in the EDM layout."""
    package = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: dict) -> Any:
        raise AssertionError("the loader must not call the pickling side's function")

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = persistence
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = package, persistence
    try:
        buffer = io.BytesIO()
        data = dict(ema=ema, loss_fn=None, augment_pipe=None, dataset_kwargs={}, **extra)
        _EdmLayoutPickler(buffer, protocol, _reconstruct_persistent_obj, version, class_names or {}).dump(data)
        return buffer.getvalue()
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def _inputs(net: edm_networks._Precond) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    sigma = torch.tensor([0.7, 4.0])
    kwargs: dict[str, torch.Tensor] = {}
    if net.label_dim:
        kwargs["class_labels"] = torch.eye(net.label_dim)[[0, net.label_dim - 1]]
    if getattr(net.model, "map_augment", None) is not None:
        kwargs["augment_labels"] = torch.randn(2, net.model.map_augment.in_features, generator=gen)
    return x, sigma, kwargs


def assert_same_network(loaded: nn.Module, original: nn.Module) -> None:
    assert type(loaded) is type(original)
    assert network_config(loaded) == network_config(original)
    a, b = loaded.state_dict(), original.state_dict()
    assert list(a) == list(b)
    for key in b:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("key", list(SMALL_CONFIGS))
def test_edm_layout_pickle_loads_into_identical_network(tmp_path: Path, key: str) -> None:
    net = small_network(key)
    data = edm_layout_pickle(net)
    assert b"torch_utils.persistence" in data and b"_reconstruct_persistent_obj" in data
    assert b"skipsearch" not in data  # nothing of ours is referenced: the layout is the official one
    assert "torch_utils" not in sys.modules
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(data)

    loaded = load_edm_pickle(path, trust=True)
    assert_same_network(loaded, net)
    if key == "adm-iddpm":
        assert torch.equal(loaded.u, net.u) and (loaded.sigma_min, loaded.sigma_max) == (net.sigma_min, net.sigma_max)
    if key.startswith("ncsnpp"):
        assert torch.equal(loaded.model.map_noise.freqs, net.model.map_noise.freqs)
    x, sigma, kwargs = _inputs(net)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, **kwargs), net(x, sigma, **kwargs))


@pytest.mark.parametrize("protocol", [2, 5])
def test_edm_layout_pickle_other_protocols(tmp_path: Path, protocol: int) -> None:
    net = small_network("ddpmpp-edm", seed=3)
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(edm_layout_pickle(net, protocol=protocol))
    assert_same_network(load_edm_pickle(path, trust=True), net)


def test_pickle_records_expose_snapshot_structure(tmp_path: Path) -> None:
    net = small_network("adm-edm")
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(edm_layout_pickle(net))
    data = read_edm_pickle(path, trust=True)
    assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    ema = data["ema"]
    assert isinstance(ema, ModuleRecord) and ema.class_name == "EDMPrecond"
    assert ema.state["_init_kwargs"]["model_type"] == "DhariwalUNet"
    enc = ema.state["_modules"]["model"].state["_modules"]["enc"]
    assert enc.class_name == "ModuleDict" and "16x16_block0" in enc.state["_modules"]
    assert list(ema.tensors()) == list(net.state_dict())
    assert_same_network(load_checkpoint(path, trust_pickle=True), net)


def test_untrusted_pickle_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UntrustedPickleError, match="--trust-pickle.*trust=True"):
        load_edm_pickle(tmp_path / "does-not-even-exist.pkl", trust=False)
    with pytest.raises(UntrustedPickleError):
        load_checkpoint(tmp_path / "snapshot.pkl")  # pickles need trust_pickle=True here too
    assert issubclass(UntrustedPickleError, CheckpointError)
    with pytest.raises(CheckpointError, match="not found"):
        load_edm_pickle(tmp_path / "missing.pkl", trust=True)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _NestedStorage:
    """A tensor storage whose nested torch.save stream carries a shell command."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self) -> tuple:
        return torch.storage._load_from_bytes, (self.payload,)


def test_dangerous_globals_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = {
        "os.system": pickle.dumps({"ema": _RunsShell(marker)}),
        "protocol 0 os.system": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        "builtins.eval": pickle.dumps(eval),
        "builtins.getattr": pickle.dumps(getattr),
        "nested storage": pickle.dumps(_NestedStorage(pickle.dumps(_RunsShell(marker), protocol=2))),
    }
    for label, data in evil.items():
        path = tmp_path / "evil.pkl"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            read_edm_pickle(path, trust=True)
        if label == "nested storage":
            assert "posix.system" in str(info.value) and "weights_only" not in str(info.value)
        else:
            assert "refusing to load global" in str(info.value), label
    assert not marker.exists()


def test_pickle_content_errors(tmp_path: Path) -> None:
    net = small_network("ddpmpp-vp")
    cases = {
        "version": (edm_layout_pickle(net, version=5), "version 5"),
        "class": (edm_layout_pickle(net, class_names={"VPPrecond": "AugmentPipe"}), "'AugmentPipe' is not supported"),
        "no ema": (edm_layout_pickle(None), "no 'ema' network"),
        "garbage": (b"PK\x03\x04 not a pickle", "cannot unpickle"),
    }
    # Recorded arguments that disagree with the stored tensors (a wider model than the weights).
    wider = small_network("ddpmpp-vp")
    wider.skipsearch_config = dict(wider.skipsearch_config, kwargs=dict(wider.skipsearch_config["kwargs"],
                                                                        model_channels=32))
    cases["shapes"] = (edm_layout_pickle(wider), "shapes differ")
    unknown = small_network("ddpmpp-vp")
    unknown.skipsearch_config = dict(unknown.skipsearch_config, kwargs=dict(unknown.skipsearch_config["kwargs"],
                                                                            not_an_argument=1))
    cases["kwargs"] = (edm_layout_pickle(unknown), "cannot build VPPrecond")
    for label, (data, message) in cases.items():
        path = tmp_path / f"{label}.pkl"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            load_edm_pickle(path, trust=True)


# ----------------------------------------------------------------------------------------------------------------
# safetensors.


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    net = small_network("ncsnpp-ve")
    path = save_network(net, tmp_path / "net.safetensors", extra_metadata={"source": "unit test"})
    loaded, metadata = load_network(path)
    assert_same_network(loaded, net)
    assert metadata["source"] == "unit test" and metadata["skipsearch.dtype"] == "float32"
    config = json.loads(metadata["skipsearch.network"])
    assert config == {"precond": "VEPrecond", "kwargs": SMALL_CONFIGS["ncsnpp-ve"][1]}
    assert load_checkpoint(path).state_dict().keys() == net.state_dict().keys()
    with pytest.raises(ValueError, match="override"):
        save_network(net, tmp_path / "x.safetensors", extra_metadata={"skipsearch.network": "{}"})


def test_safetensors_float16_shipping(tmp_path: Path) -> None:
    net = small_network("adm-iddpm")
    full = save_network(net, tmp_path / "fp32.safetensors")
    half = save_network(net, tmp_path / "fp16.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, metadata = load_network(half)
    assert metadata["skipsearch.dtype"] == "float16"
    params = dict(net.named_parameters())
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        expected = params[key].half().float() if key in params else net.state_dict()[key]  # buffers stay exact
        assert torch.equal(value, expected), key
    assert loaded.sigma_max == net.sigma_max


def test_network_config_requires_create_network(tmp_path: Path) -> None:
    plain = build_network("VEPrecond", **SMALL_CONFIGS["ncsnpp-ve"][1])
    with pytest.raises(ValueError, match="create_network"):
        network_config(plain)
    with pytest.raises(ValueError, match="create_network"):
        save_network(plain, tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a skipsearch network file"):
        load_network(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_network(tmp_path / "missing.safetensors")


def test_file_sha256_streams(tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 19) + 7)  # spans several 1 MiB chunks
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Presets: skip tables (facts §1.2 / §1.3) and full-size round trips.

# (decoder block that takes the skip, main width x, skip width s, encoder source), in decoder order k = 0, 1, ...
CIFAR_SKIPS = (
    [(f"8x8_block{i}", 256, 256, src) for i, src in enumerate(["8x8_block3", "8x8_block2", "8x8_block1",
                                                               "8x8_block0", "8x8_down"])]
    + [(f"16x16_block{i}", 256, 256, src) for i, src in enumerate(["16x16_block3", "16x16_block2", "16x16_block1",
                                                                   "16x16_block0", "16x16_down"])]
    + [(f"32x32_block{i}", 256, 256, f"32x32_block{3 - i}") for i in range(4)]
    + [("32x32_block4", 256, 128, "32x32_conv")]
)
ADM_SKIPS = [
    ("8x8_block0", 768, 768, "8x8_block2"), ("8x8_block1", 768, 768, "8x8_block1"),
    ("8x8_block2", 768, 768, "8x8_block0"), ("8x8_block3", 768, 576, "8x8_down"),
    ("16x16_block0", 768, 576, "16x16_block2"), ("16x16_block1", 576, 576, "16x16_block1"),
    ("16x16_block2", 576, 576, "16x16_block0"), ("16x16_block3", 576, 384, "16x16_down"),
    ("32x32_block0", 576, 384, "32x32_block2"), ("32x32_block1", 384, 384, "32x32_block1"),
    ("32x32_block2", 384, 384, "32x32_block0"), ("32x32_block3", 384, 192, "32x32_down"),
    ("64x64_block0", 384, 192, "64x64_block2"), ("64x64_block1", 192, 192, "64x64_block1"),
    ("64x64_block2", 192, 192, "64x64_block0"), ("64x64_block3", 192, 192, "64x64_conv"),
]


def skip_consumers(net: edm_networks._Precond) -> list[tuple[str, int, int, str]]:
    """Replays the decoder's width rule (cat when in_channels differs from the running width) on the modules."""
    enc, dec = net.model.enc, net.model.dec
    pushed = [(name, block.out_channels) for name, block in enc.items() if "aux" not in name]
    width = pushed[-1][1]
    used = []
    for name, block in dec.items():
        if "aux" in name:
            continue
        if block.in_channels != width:
            source, s = pushed.pop()
            assert block.in_channels == width + s, name
            used.append((name, width, s, source))
        width = block.out_channels
    assert not pushed
    return used


@pytest.mark.parametrize(("preset", "table"), [("edm-cifar10", CIFAR_SKIPS), ("edm-imagenet64", ADM_SKIPS)])
def test_preset_skip_tables_match_the_facts(preset: str, table: list) -> None:
    with torch.device("meta"):  # structure only: no weights needed
        net = PRESETS[preset].create()
    assert skip_consumers(net) == table and len(table) == PRESETS[preset].num_skip_points
    dec = net.model.dec
    assert {name for name in dec if "_block" in name} == {name for name, *_ in table}  # in0/in1/up/aux never do
    attention = {name for name, *_ in table if dec[name].num_heads}
    if preset == "edm-cifar10":
        assert attention == {"16x16_block4"}
    else:
        assert attention == {name for name, *_ in table if not name.startswith("64x64")}


def _round_trip(preset: Preset, tmp_path: Path, expected_params: int, keys: list[str]) -> None:
    torch.manual_seed(0)
    net = preset.create()
    assert sum(p.numel() for p in net.parameters()) == expected_params
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key in keys:
        assert key in shapes, key
    path = save_network(net, tmp_path / f"{preset.name}.safetensors")
    loaded, metadata = load_network(path)
    assert json.loads(metadata["skipsearch.network"]) == {"precond": preset.precond, "kwargs": preset.kwargs}
    assert_same_network(loaded, net)
    del net, loaded
    gc.collect()


def test_cifar10_preset_round_trip(tmp_path: Path) -> None:
    _round_trip(PRESETS["edm-cifar10"], tmp_path, 55_735_299,
                ["model.dec.32x32_aux_conv.weight", "model.dec.32x32_aux_norm.weight", "model.map_augment.weight",
                 "model.enc.16x16_down.skip.resample_filter", "model.dec.16x16_block4.qkv.weight"])


@pytest.mark.slow  # the 296M-parameter ImageNet-64 network
def test_imagenet64_preset_round_trip(tmp_path: Path) -> None:
    # The one full-size ADM build (~296M parameters, 1.2 GB fp32).
    _round_trip(PRESETS["edm-imagenet64"], tmp_path, 295_899_267,
                ["model.enc.64x64_block0.conv0.weight", "model.dec.8x8_block0.skip.weight",
                 "model.out_conv.weight", "model.map_label.weight", "model.enc.32x32_down.skip.resample_filter"])


# ----------------------------------------------------------------------------------------------------------------
# Cache and download.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving a fresh folder: (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_into_cache_then_reuse(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    payload = os.urandom(3 * (1 << 20) + 11)
    (root / "model.pkl").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    preset = dataclasses.replace(PRESETS["edm-cifar10"], url=f"{base}/model.pkl")
    cache = tmp_path / "cache"

    path = resolve_checkpoint(preset, cache_dir=cache, expected_sha256=digest, timeout=10)
    assert path == cache / "checkpoints" / preset.filename == cached_checkpoint_path(preset, cache)
    assert path.read_bytes() == payload and file_sha256(path) == digest
    assert [p.name for p in path.parent.iterdir()] == [preset.filename]  # no temp files left

    (root / "model.pkl").unlink()  # a second call must not touch the network
    assert resolve_checkpoint(preset, cache_dir=cache, expected_sha256=digest) == path
    with pytest.raises(CheckpointError, match="delete it"):
        resolve_checkpoint(preset, cache_dir=cache, expected_sha256="0" * 64)


def test_download_failures_leave_nothing(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "model.pkl").write_bytes(b"not what you expected")
    cache = tmp_path / "cache"
    preset = dataclasses.replace(PRESETS["edm-cifar10"], url=f"{base}/model.pkl")
    with pytest.raises(CheckpointError, match="expected " + "a" * 64):
        resolve_checkpoint(preset, cache_dir=cache, expected_sha256="a" * 64, timeout=10)
    missing = dataclasses.replace(preset, url=f"{base}/nope.pkl")
    with pytest.raises(CheckpointError, match=r"\(HTTP 404"):
        resolve_checkpoint(missing, cache_dir=cache, timeout=10)
    assert list((cache / "checkpoints").iterdir()) == []


def test_offline_download_error_explains_what_to_do(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x.pkl"
    preset = dataclasses.replace(PRESETS["edm-cifar10"], url=url)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(preset, cache_dir=cache, timeout=5)
    message = str(info.value)
    assert message.startswith(f"cannot download edm-cifar10 from {url} (")
    assert "refused" in message.lower()
    assert message.endswith(f"download it elsewhere and pass --checkpoint PATH, or place it at "
                            f"{cache / 'checkpoints' / preset.filename}")
    with pytest.raises(CheckpointError, match="downloading is disabled"):
        resolve_checkpoint(PRESETS["edm-cifar10"], cache_dir=cache, download=False)
    with pytest.raises(CheckpointError, match="no download URL"):
        resolve_checkpoint(dataclasses.replace(preset, url=None), cache_dir=cache)


def test_explicit_path_and_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"x")
    assert resolve_checkpoint(PRESETS["edm-imagenet64"], str(mine), download=False) == mine
    with pytest.raises(CheckpointError, match="^checkpoint not found: .*nope.pkl$"):
        resolve_checkpoint(PRESETS["edm-imagenet64"], tmp_path / "nope.pkl")
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    cached = cached_checkpoint_path(PRESETS["edm-imagenet64"])
    assert cached == tmp_path / "env-cache" / "checkpoints" / "edm-imagenet-64x64-cond-adm.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"y")
    assert resolve_checkpoint(PRESETS["edm-imagenet64"], download=False) == cached
    monkeypatch.delenv("SKIPSEARCH_CACHE")
    assert default_cache_dir() == Path("~/.cache/skipsearch").expanduser()


def test_download_file_url_with_progress(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(1 << 20 | 5))
    dest = download_file(source.as_uri(), tmp_path / "out" / "copy.bin", expected_sha256=file_sha256(source),
                         progress=True)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(CheckpointError, match="cannot download file://"):
        download_file((tmp_path / "absent.bin").as_uri(), tmp_path / "out" / "absent.bin")


def test_presets_are_consistent() -> None:
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.precond in edm_networks.PRECONDS
        assert preset.url is not None and preset.url.endswith("/" + preset.filename)
        assert preset.url.startswith("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/")
