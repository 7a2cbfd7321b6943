"""Feature extractors for the FID proxy: a small registry in the style of torch-fidelity's.

Every extractor takes images as uint8 ``[N,C,H,W]`` in [0,255], or float in [-1,1] (EDM's convention), converted by
:func:`as_uint8` -- the one place where float samples become pixels -- and returns float32 features ``[N, dim]`` on
the CPU.

- ``inception-v3-compat``: torch-fidelity's TF-compatible InceptionV3, 2048-d pool features (the FID standard).
- every other extractor of torch-fidelity's ``FEATURE_EXTRACTORS_REGISTRY`` (``clip-vit-b-32``, ``dinov2-vit-s-14``,
  ``vgg16`` ...), registered on first use by :func:`register_fidelity_extractors` with torch-fidelity's classes.
- ``mnist-features``: a small CNN trained by this project on MNIST and shipped as package data; its feature vector
  adds pooled early-layer activations and pixel statistics to the classifier's penultimate layer, so that background
  noise and blotches move it (a classifier's penultimate layer alone is blind to them).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from skipsearch.data import to_uint8
from skipsearch.models.checkpoints import file_sha256
from skipsearch.proxy.errors import ExtractorWeightsError, NonFiniteFeaturesError, ProxyConfigError
from skipsearch.registry import Registry

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MNIST_FEATURES_WEIGHTS = ASSETS / "mnist_features.safetensors"
MNIST_FEATURES_CARD = ASSETS / "mnist_features.json"

# Environment switches; documented in ExtractorWeightsError messages.
DOWNLOAD_TIMEOUT_S = 30.0




def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixels for the extractors: uint8 passes through; float is read as [-1,1] and rounded as EDM does.

    Floats outside [-1,1] are clipped (``skipsearch.data.to_uint8``); NaN/inf raise
    :class:`NonFiniteFeaturesError` because clipping would silently turn a diverged sampler into black or white
    images.
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected images as a tensor [N,C,H,W], got {shape}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 in [0,255] or float in [-1,1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise NonFiniteFeaturesError(f"{bad} of {images.shape[0]} images contain NaN or inf values")
    return to_uint8(images)


class FeatureExtractor:
    """A frozen network mapping images to float32 feature vectors ``[N, dim]``.

    Subclasses implement :meth:`_prepare` (channels, size: what the network expects) and :meth:`_forward`.
    """

    def __init__(self, name: str, module: nn.Module, dim: int, weights_sha256: str,
                 weights_path: Path | None, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.name = name
        self.dim = dim
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.module = module.to(self.device).eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, sha256={self.weights_sha256[:12]})"

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    #: the network has class logits (Inception): :meth:`features_and_logits` gives them for the Inception Score
    has_logits = False

    def _forward_all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._forward(images), None

    def __call__(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Features of ``images`` (uint8 [0,255] or float [-1,1]), computed in batches; float32 ``[N, dim]``."""
        return self.features_and_logits(images, batch_size)[0]

    def features_and_logits(self, images: torch.Tensor, batch_size: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features and, where :attr:`has_logits`, the class logits of the same forward (else None)."""
        images = as_uint8(images)
        batch_size = batch_size or self.batch_size
        out, logits = [], []
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                batch = self._prepare(images[start:start + batch_size].to(self.device))
                features, logit = self._forward_all(batch)
                out.append(features.to("cpu", torch.float32))
                if logit is not None:
                    logits.append(logit.to("cpu", torch.float32))
        features = torch.cat(out) if out else torch.zeros(0, self.dim)
        if not bool(torch.isfinite(features).all()):
            raise NonFiniteFeaturesError(f"extractor {self.name} produced NaN/inf features")
        return features, (torch.cat(logits) if logits else None)


# name -> factory(*, weights_path, device, offline) -> FeatureExtractor
ExtractorFactory = Callable[..., FeatureExtractor]
EXTRACTORS: Registry[ExtractorFactory] = Registry("feature extractor", ProxyConfigError)


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Decorator adding ``factory(*, weights_path, device, offline) -> FeatureExtractor`` to :data:`EXTRACTORS`."""
    return EXTRACTORS.decorator(name)


def get_extractor(name: str, *, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  offline: bool = False) -> FeatureExtractor:
    """Build the registered extractor ``name``; ``weights_path`` overrides its default weights; ``offline``
    forbids downloads."""
    if name not in EXTRACTORS:
        register_fidelity_extractors()
    factory = EXTRACTORS.get(name)
    return factory(weights_path=None if weights_path is None else Path(weights_path), device=device, offline=offline)


# ---------------------------------------------------------------------------------------------------------------
# inception-v3-compat: torch-fidelity's FID network
# ---------------------------------------------------------------------------------------------------------------

def _inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def inception_hub_path() -> Path:
    """Where torch-fidelity's download (``torch.hub.load_state_dict_from_url``) keeps the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _inception_url().rsplit("/", 1)[-1]


def _missing_inception_message(reason: str) -> str:
    return (f"{reason}; download {_inception_url()} to {inception_hub_path()}, or pass --extractor-weights "
            f"(or set SKIPSEARCH_FID_WEIGHTS) to /path/to/{inception_hub_path().name}")


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub opens its URL without a timeout; an unreachable host must fail, not hang a search.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextmanager
def _vetted_state_dict_file(path: Path) -> Iterator[Path]:
    """A copy of the weights that holds tensors only, for torch-fidelity (which unpickles with weights_only=False).

    The user's file is read with ``weights_only=True``, so a pickle that would run code is refused here; the copy
    we hand on contains nothing but the tensors we wrote.
    """
    import tempfile

    from skipsearch.models.checkpoints import CheckpointError, load_torch_state_dict
    try:
        state = load_torch_state_dict(path)
    except CheckpointError as exc:
        raise ExtractorWeightsError(f"Inception weights: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="skipsearch-inception-") as folder:
        safe = Path(folder) / "weights.pth"
        torch.save(state, safe)
        yield safe


INCEPTION_FEATURES = ["2048", "logits_unbiased"]  # pool features (FID) and the logits (IS), one forward


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3``, feature ``'2048'``; resizing to 299 happens inside it."""

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:  # grayscale -> RGB by replication, as PIL's convert("RGB") does in torch-fidelity
            return images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"inception-v3-compat expects 1 or 3 channels, got {images.shape[1]}")
        return images

    has_logits = True

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)[0]

    def _forward_all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features, logits = self.module(images)
        return features, logits


@register_extractor("inception-v3-compat")
def _build_inception(*, weights_path: Path | None = None, device: str | torch.device = "cpu",
                     offline: bool = False) -> FeatureExtractor:
    """Weights: ``weights_path`` (``--fid-weights``, ``Settings.fid_weights``), else the torch hub cache file,
    else a download (unless offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if weights_path is not None and not weights_path.is_file():
        raise ExtractorWeightsError(_missing_inception_message(f"Inception weights {weights_path} do not exist"))
    if weights_path is None and inception_hub_path().is_file():
        weights_path = inception_hub_path()
    if weights_path is not None:
        with _vetted_state_dict_file(weights_path) as safe:
            net = FeatureExtractorInceptionV3("inception-v3-compat", INCEPTION_FEATURES,
                                              feature_extractor_weights_path=str(safe))
    else:
        if offline:
            raise ExtractorWeightsError(_missing_inception_message("no Inception weights and offline mode is on"))
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S), redirect_stdout(sys.stderr):
                net = FeatureExtractorInceptionV3("inception-v3-compat", INCEPTION_FEATURES, verbose=False)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated file fails in torch.load
            raise ExtractorWeightsError(_missing_inception_message(f"download failed ({exc})")) from None
        weights_path = inception_hub_path()
    return InceptionExtractor("inception-v3-compat", net, 2048, file_sha256(weights_path), weights_path, device,
                              batch_size=32)


# ---------------------------------------------------------------------------------------------------------------
# mnist-features: this project's MNIST network
# ---------------------------------------------------------------------------------------------------------------

def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MnistFeatureNet(nn.Module):
    """28x28 MNIST classifier whose :meth:`features` are ``[penultimate | early-layer stats | pixel stats]``.

    - penultimate: the 128 pre-activation units of ``fc1`` (pre-ReLU keeps every unit informative);
    - early: per-channel spatial mean and std of the conv1 (16 ch, 28x28) and conv2 (32 ch, 14x14) activations,
      which carry texture (noise, speckle, blur) that the classifier learns to ignore;
    - pixels: 8 statistics of the [0,1] image (see :meth:`pixel_stats`).

    Each coordinate is then standardised with the MNIST-train mean and std stored in ``feature_shift`` and
    ``feature_scale``, so both parts count equally per dimension and FID reads in train-std units.
    """

    C1, C2, C3, HIDDEN = 16, 32, 64, 128
    N_PIXEL_STATS = 8
    DIM = HIDDEN + 2 * (C1 + C2) + N_PIXEL_STATS  # 232

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_block(1, self.C1)
        self.conv2 = _conv_block(self.C1, self.C2)
        self.conv3 = _conv_block(self.C2, self.C3)
        self.fc1 = nn.Linear(self.C3 * 7 * 7, self.HIDDEN)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(self.HIDDEN, 10)
        self.register_buffer("feature_shift", torch.zeros(self.DIM))
        self.register_buffer("feature_scale", torch.ones(self.DIM))
        self.register_buffer("laplacian", torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3),
                             persistent=False)

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,1,28,28] -> float [-1,1] network input."""
        return images.to(torch.float32) / 127.5 - 1

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a1 = self.conv1(x)
        a2 = self.conv2(F.max_pool2d(a1, 2))
        a3 = self.conv3(F.max_pool2d(a2, 2))
        return a1, a2, self.fc1(a3.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images."""
        return self.fc2(self.dropout(F.relu(self._trunk(x)[2])))

    def pixel_stats(self, x: torch.Tensor) -> torch.Tensor:
        """mean, std, mid-gray fraction, bright fraction, total variation, mean |Laplacian|, border mean, border
        ink fraction of images in [0,1]; MNIST digits are sharp, centred, on a black background."""
        flat = x.flatten(1)
        border = torch.ones_like(x[0, 0], dtype=torch.bool)
        border[4:-4, 4:-4] = False  # MNIST centres digits in the inner 20x20 box
        frame = x[:, 0][:, border]
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
        lap = F.conv2d(x, self.laplacian.to(x.dtype)).abs().mean((1, 2, 3))
        return torch.stack([
            flat.mean(1), flat.std(1, unbiased=False),
            ((flat > 0.1) & (flat < 0.9)).float().mean(1), (flat >= 0.9).float().mean(1),
            tv, lap, frame.mean(1), (frame > 0.1).float().mean(1)], dim=1)

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unstandardised feature vector of uint8 [N,1,28,28] images."""
        a1, a2, hidden = self._trunk(self.normalise(images))
        early = [a1.mean((2, 3)), a1.std((2, 3), unbiased=False), a2.mean((2, 3)), a2.std((2, 3), unbiased=False)]
        return torch.cat([hidden, *early, self.pixel_stats(images.to(torch.float32) / 255)], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return (self.raw_features(images) - self.feature_shift) * self.feature_scale


class MnistExtractor(FeatureExtractor):
    """Gray 28x28 input: RGB is averaged to gray, other sizes are resized (antialiased bilinear)."""

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3:
            images = images.to(torch.float32).mean(1, keepdim=True).round().to(torch.uint8)
        elif images.shape[1] != 1:
            raise ValueError(f"mnist-features expects 1 or 3 channels, got {images.shape[1]}")
        if images.shape[-2:] != (28, 28):
            resized = F.interpolate(images.to(torch.float32), size=(28, 28), mode="bilinear", antialias=True,
                                    align_corners=False)
            images = resized.round().clamp(0, 255).to(torch.uint8)
        return images

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.features(images)


def load_card(weights_path: Path) -> dict | None:
    """The JSON card beside a weights file (same stem), if any."""
    from skipsearch.inputs import read_user_text
    card = weights_path.with_suffix(".json")
    if not card.is_file():
        return None
    try:
        data = json.loads(read_user_text(card, "weights card", error=ExtractorWeightsError))
    except (ValueError, RecursionError) as exc:
        raise ExtractorWeightsError(f"{card}: the card of {weights_path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExtractorWeightsError(f"{card}: the card of {weights_path.name} must be a JSON object")
    return data


@register_extractor("mnist-features")
def _build_mnist(*, weights_path: Path | None = None, device: str | torch.device = "cpu",
                 offline: bool = False) -> FeatureExtractor:
    """Weights: ``weights_path``, else the shipped ``skipsearch/assets/mnist_features.safetensors``; the sha256 is
    checked against the card beside the file (mandatory for the shipped one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shipped = weights_path is None
    path = MNIST_FEATURES_WEIGHTS if shipped else weights_path
    if not path.is_file():
        hint = "run scripts/train_mnist_features.py" if shipped else "pass an existing file"
        raise ExtractorWeightsError(f"mnist-features weights {path} do not exist; {hint}")
    sha = file_sha256(path)
    card = load_card(path)
    if shipped and card is None:
        raise ExtractorWeightsError(f"card {path.with_suffix('.json')} is missing; "
                                    "run scripts/train_mnist_features.py")
    if card is not None and card.get("sha256") != sha:
        raise ExtractorWeightsError(f"{path} has sha256 {sha} but its card says {card.get('sha256')}; "
                                    "the weights were changed or corrupted, re-run scripts/train_mnist_features.py")
    net = MnistFeatureNet()
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:  # not safetensors, or another network's
        first = " ".join(str(exc).split())[:300]
        raise ExtractorWeightsError(f"mnist-features weights {path} are not a safetensors file of the "
                                    f"mnist-features network ({first}); pass one scripts/train_mnist_features.py "
                                    "writes") from None
    return MnistExtractor("mnist-features", net, MnistFeatureNet.DIM, sha, path, device, batch_size=1000)


# ---------------------------------------------------------------------------------------------------------------
# every other extractor torch-fidelity registers (CLIP, DINOv2, VGG16, ...), through its own registry and classes
# ---------------------------------------------------------------------------------------------------------------

def _fidelity_registry() -> dict:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    return FEATURE_EXTRACTORS_REGISTRY


def register_fidelity_extractors() -> None:
    """Adds each extractor of torch-fidelity's ``FEATURE_EXTRACTORS_REGISTRY`` not registered here yet (lazily:
    importing this module does not import torch-fidelity)."""
    from functools import partial
    for name in _fidelity_registry():
        if name not in EXTRACTORS:
            EXTRACTORS.register(name, partial(_build_fidelity, name))


def extractor_names() -> list[str]:
    """Every extractor name: ours and torch-fidelity's."""
    register_fidelity_extractors()
    return EXTRACTORS.names()


def _load_user_state_dict(name: str, path: Path) -> dict[str, torch.Tensor]:
    """``path`` read as tensors only: safetensors, or a torch file with ``weights_only=True``."""
    if not path.is_file():
        raise ExtractorWeightsError(f"{name} weights {path} do not exist; pass an existing file to "
                                    "--extractor-weights")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExtractorWeightsError(f"{name} weights {path}: not a safetensors file ({exc})") from None
    from skipsearch.models.checkpoints import CheckpointError, load_torch_state_dict
    try:
        return load_torch_state_dict(path)
    except CheckpointError as exc:
        raise ExtractorWeightsError(f"{name} weights: {exc}") from None


def _clip_hub_path(name: str) -> Path:
    from torch_fidelity.feature_extractor_clip import MODEL_METADATA
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}-{MODEL_METADATA[name]['hash']}.pt"


class FidelityExtractor(FeatureExtractor):
    """A torch-fidelity feature extractor (uint8 RGB in, its default FID feature layer out); gray is replicated."""

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            return images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"{self.name} expects 1 or 3 channels, got {images.shape[1]}")
        return images

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)[0]


def _needs_network(name: str, why: str) -> ExtractorWeightsError:
    return ExtractorWeightsError(f"extractor {name} needs the network: {why}")


def _build_fidelity(name: str, *, weights_path: Path | None = None, device: str | torch.device = "cpu",
                    offline: bool = False) -> FeatureExtractor:
    """torch-fidelity's class for ``name``, with its own architecture. Weights: ``weights_path`` (a state dict,
    read with ``weights_only=True``, or safetensors), else torch-fidelity's download (or its cache)."""
    import hashlib

    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP, build_model
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

    cls = _fidelity_registry()[name]
    layer = cls.get_default_feature_layer_for_metric("fid")
    if issubclass(cls, FeatureExtractorDinoV2):  # torch.hub.load("facebookresearch/dinov2"): code and weights
        if weights_path is not None or offline:
            raise _needs_network(name, "torch-fidelity loads DINOv2 only through torch.hub (facebookresearch/dinov2)"
                                       ", which has no local-weights route")
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S), redirect_stdout(sys.stderr):
                net = cls(name, [layer])
        except Exception as exc:  # noqa: BLE001 - hub: URLError, HTTPError, RuntimeError, ImportError ...
            raise _needs_network(name, f"torch.hub could not load facebookresearch/dinov2 "
                                       f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        identity = hashlib.sha256(f"torch.hub:facebookresearch/dinov2:{name}".encode()).hexdigest()
        path = None
    elif weights_path is not None:
        state = _load_user_state_dict(name, weights_path)
        try:
            if issubclass(cls, FeatureExtractorCLIP):  # torch-fidelity reads TorchScript; we build from tensors
                net = cls.__new__(cls)
                FeatureExtractorBase.__init__(net, name, [layer])
                net.feature_extractor_internal_dtype = torch.float32
                net.model = build_model(dict(state), torch.float32)
                net.resolution = net.model.visual.input_resolution
                net.requires_grad_(False)
            else:
                with _vetted_copy(state) as safe:
                    net = cls(name, [layer], feature_extractor_weights_path=str(safe))
        except (RuntimeError, KeyError, ValueError, AssertionError) as exc:  # another network's state dict
            first = " ".join(str(exc).split())[:200]
            raise ExtractorWeightsError(f"{name} weights {weights_path} do not fit torch-fidelity's {name} "
                                        f"network ({type(exc).__name__}: {first})") from None
        identity, path = file_sha256(weights_path), weights_path
    else:
        cached = _clip_hub_path(name) if issubclass(cls, FeatureExtractorCLIP) else None
        if offline and (cached is None or not cached.is_file()):
            where = f" (or put torch-fidelity's download at {cached})" if cached is not None else ""
            raise ExtractorWeightsError(f"no {name} weights and offline mode is on; pass --extractor-weights "
                                        f"PATH (a state dict or .safetensors of torch-fidelity's {name}){where}")
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S), redirect_stdout(sys.stderr):
                net = cls(name, [layer], verbose=False)
        except (OSError, RuntimeError) as exc:
            raise ExtractorWeightsError(f"{name}: download failed ({' '.join(str(exc).split())[:160]}); pass "
                                        "--extractor-weights PATH") from None
        path = cached if cached is not None and cached.is_file() else None
        identity = file_sha256(path) if path else hashlib.sha256(f"torch-fidelity:{name}".encode()).hexdigest()
    net = net.eval().requires_grad_(False)
    with torch.inference_mode():
        dim = int(net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))[0].shape[-1])
    return FidelityExtractor(name, net, dim, identity, path, device, batch_size=32)


@contextmanager
def _vetted_copy(state: dict[str, torch.Tensor]) -> Iterator[Path]:
    """``state`` saved to a temporary file holding tensors only, for torch-fidelity's own loader."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="skipsearch-extractor-") as folder:
        safe = Path(folder) / "weights.pth"
        torch.save(state, safe)
        yield safe
