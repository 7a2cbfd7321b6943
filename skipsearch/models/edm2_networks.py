"""EDM2's magnitude-preserving UNet and its preconditioner (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models").

Written for skipsearch from the paper's description of the architecture. Module names, parameter names and shapes
follow the official checkpoints so that their ``state_dict`` loads with ``strict=True``; the code is ours.

Read top to bottom: the magnitude-preserving operations -> ``MPFourier``, ``MPConv`` -> ``Block`` -> ``UNet`` ->
``Precond``. Every skip the decoder consumes enters through one line of ``UNet.forward``:
``mp_cat(x, skips.pop(), t=concat_balance)``, i.e. ``cat([wa * x, wb * skip])`` with constant wa, wb, so the decoder
block right after it receives the concatenation; skip-tuning scales its trailing (skip) channels with a forward
pre-hook (:mod:`skipsearch.models.hooks`) and the network stays plain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from skipsearch.models.edm_networks import precond_inputs

PRECOND_NAME = "EDM2Precond"  # how skipsearch's network files name this preconditioner (EDM's are "EDMPrecond", ...)
PICKLED_CLASS = "Precond"  # the class name official EDM2 pickles record

# ----------------------------------------------------------------------------------------------------------------
# Magnitude-preserving operations: each keeps unit-variance inputs at unit variance.


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``x`` scaled to unit root-mean-square over ``dim`` (default: all but the batch dimension)."""
    dims = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    # A norm over n of the x.numel() / norm.numel() elements becomes a root-mean-square: divide by sqrt(n).
    rms = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / rms.to(x.dtype)


def resample(x: torch.Tensor, kernel: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """Halve (``down``) or double (``up``) the resolution with a separable box/FIR ``kernel``; ``keep``: x itself."""
    if mode == "keep":
        return x
    taps = torch.as_tensor(list(kernel), dtype=torch.float32)
    if taps.ndim != 1 or len(taps) % 2:
        raise ValueError(f"resample kernel must have an even number of taps, got {list(kernel)}")
    taps = taps / taps.sum()
    channels, pad = x.shape[1], (len(taps) - 1) // 2
    weight = torch.outer(taps, taps).to(device=x.device, dtype=x.dtype).repeat(channels, 1, 1, 1)
    if mode == "down":
        return F.conv2d(x, weight, groups=channels, stride=2, padding=pad)
    if mode != "up":
        raise ValueError(f"resample mode must be keep, down or up, got {mode!r}")
    return F.conv_transpose2d(x, weight * 4, groups=channels, stride=2, padding=pad)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output's standard deviation under a standard normal input (0.596)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """``(1 - t) a + t b``, rescaled so that two independent unit-variance inputs give a unit-variance output."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat_weights(channels_a: int, channels_b: int, t: float = 0.5) -> tuple[float, float]:
    """The constants (wa, wb) of ``mp_cat``: the parts weighted ``1 - t`` and ``t``, the whole at unit magnitude."""
    whole = math.sqrt((channels_a + channels_b) / ((1 - t) ** 2 + t**2))
    return whole * (1 - t) / math.sqrt(channels_a), whole * t / math.sqrt(channels_b)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation ``cat([wa * a, wb * b])`` (:func:`mp_cat_weights`)."""
    wa, wb = mp_cat_weights(a.shape[dim], b.shape[dim], t)
    return torch.cat([wa * a, wb * b], dim=dim)


# ----------------------------------------------------------------------------------------------------------------
# Layers.


class MPFourier(nn.Module):
    """Fourier features of a scalar with random frequencies and phases, scaled to unit variance."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (angles.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel`` of two sizes) or fully-connected layer (``kernel == ()``).

    The weight is used normalised per output channel and scaled by ``gain / sqrt(fan_in)``. In training mode the
    stored weight is also overwritten by its normalised self before use (forced weight normalisation), so its
    magnitude cannot drift; in eval mode the parameter is left untouched.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        weight = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(weight))
        fan_in = weight[0].numel()
        weight = (normalize(weight) * (gain / math.sqrt(fan_in))).to(x.dtype)
        if weight.ndim == 2:
            return x @ weight.t()
        return F.conv2d(x, weight, padding=weight.shape[-1] // 2)


class Block(nn.Module):
    """An encoder (``flavor='enc'``) or decoder (``'dec'``) block: optional resampling, a residual branch modulated
    by the embedding, an optional self-attention, each joined to the main path with ``mp_sum``; activations clipped.

    An encoder block changes width on its main path (``conv_skip`` before the branch); a decoder block, whose input
    is the concatenation ``mp_cat(main, skip)``, runs the branch on that input and projects it with ``conv_skip``
    only when joining, so rho on the skip reaches both. ``conv_skip`` is a 1x1 projection, not a UNet skip.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter: Sequence[int] = (1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256):
        if flavor not in ("enc", "dec"):
            raise ValueError(f"block flavor must be 'enc' or 'dec', got {flavor!r}")
        super().__init__()
        self.in_channels, self.out_channels, self.flavor = in_channels, out_channels, flavor
        self.resample_mode, self.resample_filter = resample_mode, list(resample_filter)
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.clip_act = dropout, clip_act
        self.res_balance, self.attn_balance = res_balance, attn_balance
        # Registration order = the official state-dict order.
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=(3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=())
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=(3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, kernel=(1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=(1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=(1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: every position at unit magnitude

        y = self.conv_res0(mp_silu(x))
        modulation = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * modulation[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attend(x), t=self.attn_balance)
        return x if self.clip_act is None else x.clamp(-self.clip_act, self.clip_act)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over positions with pixel-normalised queries, keys and values."""
        qkv = self.attn_qkv(x)
        qkv = qkv.reshape(qkv.shape[0], self.num_heads, -1, 3, qkv.shape[2] * qkv.shape[3])
        q, k, v = normalize(qkv, dim=2).unbind(3)  # [N, heads, channels, positions] each
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        attended = torch.einsum("nhqk,nhck->nhcq", weights, v)
        return self.attn_proj(attended.reshape(*x.shape))


# ----------------------------------------------------------------------------------------------------------------
# The UNet. Every encoder output (the stem convolution and the down blocks included) is pushed on ``skips``; every
# decoder block whose name contains ``block`` pops one (LIFO) and receives ``mp_cat(main, skip)``.


class UNet(nn.Module):
    """EDM2's UNet: an encoder and a decoder of ``Block``s in ``ModuleDict``s keyed ``{res}x{res}_{kind}``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, **block_kwargs):
        super().__init__()
        widths = [model_channels * mult for mult in channel_mult]
        noise_channels = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_channels = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=())
        self.emb_label = MPConv(label_dim, emb_channels, kernel=()) if label_dim else None

        def block(cin: int, cout: int, flavor: str, res: int, **kwargs) -> Block:
            kwargs.setdefault("attention", res in attn_resolutions)
            return Block(cin, cout, emb_channels, flavor=flavor, **kwargs, **block_kwargs)

        self.enc = nn.ModuleDict()
        width = img_channels + 1  # the input gets a constant all-ones channel
        for level, channels in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(width, channels, kernel=(3, 3))
                width = channels
            else:
                self.enc[f"{res}x{res}_down"] = block(width, width, "enc", res, resample_mode="down",
                                                      attention=False)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(width, channels, "enc", res)
                width = channels

        skip_widths = [module.out_channels for module in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = block(width, width, "dec", res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(width, width, "dec", res, attention=False)
            else:
                self.dec[f"{res}x{res}_up"] = block(width, width, "dec", res, resample_mode="up", attention=False)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = block(width + skip_widths.pop(), channels, "dec", res)
                width = channels
        self.out_conv = MPConv(width, img_channels, kernel=(3, 3))

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The block embedding of the noise level and (for a conditional UNet) the one-hot class."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            label = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label, t=self.label_balance)
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # the network input, not a skip
        skips: list[torch.Tensor] = []
        for name, module in self.enc.items():
            x = module(x) if isinstance(module, MPConv) else module(x, emb)
            skips.append(x)
        for name, module in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)  # main first, skip second; rho scales the skip
            x = module(x, emb)
        return self.out_conv(x, gain=self.out_gain)


# ----------------------------------------------------------------------------------------------------------------
# The preconditioner: D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4), EDM's coefficients.


class Precond(nn.Module):
    """EDM2's preconditioned denoiser ``net(x, sigma, class_labels)``; its UNet is ``net.unet``.

    ``logvar_fourier``/``logvar_linear`` are the training-time uncertainty head (``return_logvar=True``), kept so
    the official state dicts load; sampling does not use them. ``use_fp16`` runs the UNet in float16 on CUDA only.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, **unet_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=())

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for a float32 sigma of shape [B, 1, 1, 1]; c_noise is flat [B]."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.flatten().log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, return_logvar: bool = False, **unet_kwargs):
        x, sigma, class_labels, dtype = precond_inputs(x, sigma, class_labels, self.label_dim,
                                                       self.use_fp16 and not force_fp32)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f_x = self.unet((c_in * x).to(dtype), c_noise, class_labels, **unet_kwargs)
        denoised = c_skip * x + c_out * f_x.to(torch.float32)
        if return_logvar:
            return denoised, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return denoised
