"""StyleGAN coarse generator: StyleGAN2 (config-f, StyleGAN2-ADA incl. conditional) and StyleGAN3 (-T / -R).

Pure PyTorch, no CUDA extensions. Parameter and buffer names follow the NVlabs code (stylegan2-ada-pytorch,
stylegan3) so their checkpoints load with strict key and shape checks. The StyleGAN3 synthesis network lives
in `stylegan3.py`, the ops both share in `stylegan_ops.py`; the mapping network and the StyleGAN2 synthesis
network are here.

Shapes: z (N, z_dim); c (N, c_dim); w (N, w_dim); ws / W+ (N, num_ws, w_dim); images (N, C, H, W) in [-1, 1].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints as ck
from torch import nn

from .stylegan_ops import (LRELU_GAIN, FullyConnectedLayer, NoiseMode, bias_act,  # noqa: F401  (also used as sg.*)
                           conv2d_resample, modulated_conv2d, normalize_2nd_moment, setup_filter, upfirdn2d,
                           upfirdn2d_reference, upsample2d)


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """z (+ class embedding) -> w, broadcast to num_ws, with truncation toward the tracked mean `w_avg`.

    StyleGAN2 uses 8 layers, StyleGAN3 2; both name them fc0..fc{L-1}, the label embedding `embed`.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z.float()) if self.z_dim > 0 else None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim={self.c_dim}); give a class label")
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (N, num_ws, w_dim)
        return truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """Pull W+ toward w_avg: psi = 1 leaves it, 0 gives w_avg; only the first `cutoff` layers if given."""
    if psi == 1:
        return ws
    cutoff = ws.shape[1] if cutoff is None else cutoff
    out = ws.clone()
    out[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], psi)
    return out


class SynthesisLayer(nn.Module):
    """StyleGAN2 modulated 3x3 conv (+ optional 2x up), per-pixel noise, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp, self.padding = conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "const", gain: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator,
                                device=x.device if generator is None else generator.device).to(x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused=not self.training)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=LRELU_GAIN * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """1x1 modulated conv to image channels, no demodulation, no activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=not self.training)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Plain equalized-lr conv; in the generator only the 1x1 up-sampling skip of the 'resnet' architecture."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.activation, self.up, self.conv_clamp, self.padding = activation, up, conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.up > 1 and w.shape[-1] == 1:  # 1x1: convolve first, then upsample (exactly equivalent)
            x = upsample2d(F.conv2d(x, w), self.resample_filter, self.up)
        else:
            x = conv2d_resample(x, w, self.resample_filter, up=self.up, padding=self.padding)
        act_gain = (1.0 if self.activation == "linear" else LRELU_GAIN) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the StyleGAN2 synthesis network: [const | conv0 (2x up)] -> conv1 -> torgb."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1), conv_clamp=256,
                 use_fp16: bool = False, fp16_channels_last: bool = False, fused_modconv_default=True,
                 **layer_kwargs):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown StyleGAN2 block architecture {architecture!r} (orig, skip, resnet)")
        (self.in_channels, self.resolution,
         self.is_last, self.architecture) = in_channels, resolution, is_last, architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x, img, ws: torch.Tensor, dtype: torch.dtype, noise_mode: NoiseMode = "const",
                generator: torch.Generator | None = None):
        w_iter = iter(ws.unbind(dim=1))
        kw = dict(noise_mode=noise_mode, generator=generator)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, next(w_iter), **kw)
        elif self.architecture == "resnet":
            x = x.to(dtype)
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), **kw)
            x = y.add_(self.conv1(x, next(w_iter), gain=math.sqrt(0.5), **kw))
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), **kw)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter)).float()
            img = img.add_(y) if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis: blocks b4, b8, ..., b{img_resolution}; W+ slices overlap by one (torgb shares)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   is_last=res == img_resolution, use_fp16=res >= fp16_resolution, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "const", generator: torch.Generator | None = None,
                fp16: bool = False) -> torch.Tensor:
        ws = ws.float()
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            dtype = torch.float16 if fp16 and block.use_fp16 else torch.float32
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), dtype,
                           noise_mode=noise_mode, generator=generator)
            w_idx += block.num_conv
        return img

    def layer_names(self) -> list[str]:
        """Human names of the W+ rows, e.g. 'b8.conv0' (for style-mixing layer ranges)."""
        names = []
        for res in self.block_resolutions:
            names += [f"b{res}.conv0"] * (res > 4) + [f"b{res}.conv1"]
        return names + [f"b{self.img_resolution}.torgb"]


# --------------------------------------------------------------------------------------------------------------
# Generator and its configuration
# --------------------------------------------------------------------------------------------------------------
ARCHITECTURES = ("stylegan2", "stylegan3")


@dataclass(frozen=True)
class StyleGANConfig:
    """Everything needed to rebuild a generator; `synthesis_kwargs` / `mapping_kwargs` use NVlabs' names."""

    arch: str
    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    mapping_kwargs: dict[str, Any] = field(default_factory=dict)
    synthesis_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown StyleGAN architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}")


class Generator(nn.Module):
    """mapping (z, c -> W+) + synthesis (W+ -> image). Names as NVlabs' `G_ema`."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        self.config = config
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        if config.arch == "stylegan2":
            synthesis_cls = SynthesisNetwork
        else:
            from .stylegan3 import SynthesisNetwork3 as synthesis_cls  # stylegan3 imports this module's ops
        self.synthesis = synthesis_cls(w_dim=config.w_dim, img_resolution=config.img_resolution,
                                       img_channels=config.img_channels, **config.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        mapping_defaults = {"num_layers": 8 if config.arch == "stylegan2" else 2}
        self.mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, self.num_ws,
                                      **{**mapping_defaults, **config.mapping_kwargs})
        # identity of the CLIP whose style embeddings a CLIP-conditioned generator takes as its label c ("" when
        # c is a one-hot class, or absent): recorded in our safetensors so a style from another CLIP is refused
        self.style_clip = ""

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: NoiseMode = "const", generator: torch.Generator | None = None) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, generator=generator)


# --------------------------------------------------------------------------------------------------------------
# Loading: NVIDIA pickles (G_ema, else G), our safetensors (config in metadata)
# --------------------------------------------------------------------------------------------------------------
SUPPORTED = ("StyleGAN2 (config E/F, PyTorch or TensorFlow), StyleGAN2-ADA (incl. conditional, PyTorch or TensorFlow), "
             "StyleGAN3-T/-R")
SAFETENSORS_FORMAT = "diffugan.stylegan.v1"
_TOP_LEVEL_KWARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")


def config_from_pickle_record(record, source: str) -> StyleGANConfig:
    """Read the architecture off an NVlabs Generator record: its constructor kwargs and its submodule names."""
    from .checkpoints import CheckpointError, record_child

    if record.class_name != "Generator":
        raise CheckpointError(f"{source}: the network is a '{record.class_name}', not a StyleGAN Generator")
    kwargs = dict(record.state.get("_init_kwargs") or {})
    if record.state.get("_init_args"):
        raise CheckpointError(f"{source}: unexpected positional constructor arguments; supported: {SUPPORTED}")
    synthesis = record_child(record, "synthesis")
    children = set((synthesis.state.get("_modules") or {}) if synthesis is not None else ())
    if "b4" in children:
        arch = "stylegan2"
    elif "input" in children and any(c.startswith("L0_") for c in children):
        arch = "stylegan3"
    else:
        raise CheckpointError(
            f"{source}: unknown generator layout (synthesis submodules: {', '.join(sorted(children)) or 'none'}); "
            f"supported: {SUPPORTED}")
    missing = [k for k in _TOP_LEVEL_KWARGS[:5] if k not in kwargs]
    if missing:
        raise CheckpointError(f"{source}: the Generator record lacks {', '.join(missing)}; supported: {SUPPORTED}")
    synthesis_kwargs = {k: v for k, v in kwargs.items() if k not in _TOP_LEVEL_KWARGS}
    synthesis_kwargs.update(kwargs.get("synthesis_kwargs") or {})  # stylegan2-ada-pytorch nests them
    return StyleGANConfig(arch, int(kwargs["z_dim"]), int(kwargs["c_dim"]), int(kwargs["w_dim"]),
                          int(kwargs["img_resolution"]), int(kwargs["img_channels"]),
                          dict(kwargs.get("mapping_kwargs") or {}), _plain(synthesis_kwargs))


def _plain(d: dict) -> dict:
    """Turn numpy scalars from a pickle into Python numbers so configs serialise as JSON."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def build_generator(config: StyleGANConfig, source: str) -> Generator:
    from .checkpoints import CheckpointError

    try:
        return Generator(config)
    except TypeError as e:  # an unknown constructor setting: a variant we do not implement (e.g. StyleGAN-XL)
        raise CheckpointError(f"{source}: unsupported {config.arch} variant ({e}); supported: {SUPPORTED}") from None


def describe(G: "Generator", name: str) -> str:
    """Identity of a generator as W+ payloads and style mappers record it: file name plus the W+ shape."""
    c = G.config
    return f"{name} ({c.arch}, {c.img_resolution}px, num_ws={G.num_ws}, w_dim={c.w_dim})"


@ck.user_file_loader("StyleGAN generator", (".pkl", ".safetensors"))
def load_stylegan(path, device: str | torch.device = "cpu") -> Generator:
    """Load a generator from an NVIDIA `.pkl` or a DiffuGAN `.safetensors`, strictly, without executing code."""
    from pathlib import Path

    path = Path(path)
    source = path.name
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        data = ck.load_nvidia_pickle(path)
        record = None
        if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, ck.TFNetworkRecord) for n in data):
            config, tensors = _from_tf_network(data[2], source)  # (G, D, Gs): Gs, the EMA generator
            G = ck.build_checked(lambda: build_generator(config, source), tensors, source, config,
                                 computed=("resample_filter",))
            return G.eval().requires_grad_(False).to(device)
        if isinstance(data, dict):
            record = data.get("G_ema") if isinstance(data.get("G_ema"), ck.PersistentRecord) else data.get("G")
        if not isinstance(record, ck.PersistentRecord):
            keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise ck.CheckpointError(f"{source}: no 'G_ema' or 'G' network in the pickle (found: {keys}); "
                                     f"supported: {SUPPORTED}")
        config = config_from_pickle_record(record, source)
        tensors = ck.record_tensors(record)
    elif suffix == ".safetensors":
        tensors, meta = ck.load_safetensors(path)
        if meta.get("format") != SAFETENSORS_FORMAT or "config" not in meta:
            raise ck.CheckpointError(
                f"{source}: no DiffuGAN StyleGAN metadata (format={meta.get('format')!r}); convert NVIDIA pickles "
                "with scripts/convert_stylegan.py")
        try:
            config = StyleGANConfig(**json.loads(meta["config"]))
        except (TypeError, ValueError) as e:
            raise ck.CheckpointError(f"{source}: bad architecture metadata ({e})") from None
    else:
        raise ck.CheckpointError(f"{source}: unsupported file type '{suffix}'; use an NVIDIA .pkl or a .safetensors "
                                 "written by scripts/convert_stylegan.py")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    G = ck.build_checked(lambda: build_generator(config, source), tensors, source, config)
    if suffix == ".safetensors":
        G.style_clip = meta.get("style_clip", "")
        if G.style_clip and G.c_dim == 0:
            raise ck.CheckpointError(f"{source}: records a style CLIP but has no label input (c_dim=0)")
    return G.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------------------------
# TensorFlow pickles: NVlabs' StyleGAN2 and StyleGAN2-ADA (TF) networks, read as their PyTorch port reads them
# --------------------------------------------------------------------------------------------------------------
# TF kwarg -> (part of the config, our name, default). Part None: accepted, not needed to draw (training settings).
_TF_KWARGS = {
    "latent_size": ("top", "z_dim", 512), "label_size": ("top", "c_dim", 0), "dlatent_size": ("top", "w_dim", 512),
    "resolution": ("top", "img_resolution", 1024), "num_channels": ("top", "img_channels", 3),
    "mapping_layers": ("mapping", "num_layers", 8), "label_fmaps": ("mapping", "embed_features", None),
    "mapping_fmaps": ("mapping", "layer_features", None), "mapping_nonlinearity": ("mapping", "activation", "lrelu"),
    "mapping_lrmul": ("mapping", "lr_multiplier", 0.01),
    "fmap_base": ("synthesis", "channel_base", 16384), "fmap_max": ("synthesis", "channel_max", 512),
    "architecture": ("synthesis", "architecture", "skip"), "resample_kernel": ("synthesis", "resample_filter", None),
    "nonlinearity": ("synthesis", "activation", "lrelu"), "use_noise": ("synthesis", "use_noise", True),
    "num_fp16_res": ("synthesis", "num_fp16_res", 0), "conv_clamp": ("synthesis", "conv_clamp", None),
    **{k: (None, k, None) for k in ("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure",
                                    "w_avg_beta", "dlatent_avg_beta")},
}
_TF_UNUSED_VARIABLES = ("lod",)  # the progressive-growing level, a constant 0 in StyleGAN2


def _tf_config(net, source: str) -> StyleGANConfig:
    from .checkpoints import CheckpointError

    if net.version < 4:
        raise CheckpointError(f"{source}: a TensorFlow network pickle of format version {net.version} (StyleGAN1 "
                              f"era); supported: {SUPPORTED}")
    unknown = sorted(set(net.static_kwargs) - set(_TF_KWARGS))
    if unknown:
        raise CheckpointError(f"{source}: the TensorFlow network has settings this loader does not implement "
                              f"({', '.join(unknown)}); supported: {SUPPORTED}")
    parts: dict[str, dict] = {"top": {}, "mapping": {}, "synthesis": {"num_fp16_res": 0, "conv_clamp": None}}
    for tf_name, (part, name, default) in _TF_KWARGS.items():
        value = net.static_kwargs.get(tf_name, default)
        if part is None or value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if tf_name == "fmap_base":  # TF's nf(stage) = fmap_base / 2^stage, stage = log2(res) - 1: per pixel, twice
            value = int(value) * 2
        if tf_name == "resample_kernel":
            value = [float(v) for v in value]
        parts[part][name] = value
    return StyleGANConfig("stylegan2", **parts["top"], mapping_kwargs=parts["mapping"],
                          synthesis_kwargs=_plain(parts["synthesis"]))


def _tf_source(key: str) -> tuple[str, Any] | None:
    """Our parameter `key` -> (the TF variable holding it, how to turn it into ours); None for buffers we compute
    (resample filters). TF keeps dense weights (in, out), conv weights (kh, kw, in, out) and modulation biases
    without their +1; its upsampling convolutions are transposed ones, so their kernels are flipped."""
    import re

    dense = lambda a: a.T  # noqa: E731
    conv = lambda a: a.transpose(3, 2, 0, 1)  # noqa: E731
    conv_flipped = lambda a: a[::-1, ::-1].transpose(3, 2, 0, 1)  # noqa: E731
    same = lambda a: a  # noqa: E731
    if key.endswith("resample_filter"):
        return None
    if key == "mapping.w_avg":
        return "dlatent_avg", same
    m = re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", key)
    if m:
        scope = "LabelEmbed" if m[1] == "embed" else f"Dense{m[2]}"
        return f"mapping/{scope}/{m[3]}", dense if m[3] == "weight" else same
    if key == "synthesis.b4.const":
        return "synthesis/4x4/Const/const", lambda a: a[0]
    m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb|skip)\.(.+)", key)
    if not m:
        return key, same  # not a parameter TF networks have: reported as missing
    res, layer, name = int(m[1]), m[2], m[3]
    scope = f"synthesis/{res}x{res}/" + {"conv0": "Conv0_up", "conv1": "Conv1" if res > 4 else "Conv",
                                         "torgb": "ToRGB", "skip": "Skip"}[layer]
    if name == "noise_const":  # TF keeps the constant noise of layer i as synthesis/noise<i>, shape (1, 1, r, r)
        index = 0 if res == 4 else 2 * int(math.log2(res)) - (5 if layer == "conv0" else 4)
        return f"synthesis/noise{index}", lambda a: a[0, 0]
    if name == "weight":
        return f"{scope}/weight", conv_flipped if layer in ("conv0", "skip") else conv
    if name == "affine.weight":
        return f"{scope}/mod_weight", dense
    if name == "affine.bias":
        return f"{scope}/mod_bias", lambda a: a + 1
    return f"{scope}/{name}", same  # bias, noise_strength


def _from_tf_network(net, source: str) -> tuple[StyleGANConfig, dict[str, torch.Tensor]]:
    """A TensorFlow StyleGAN2 / StyleGAN2-ADA generator record -> our config and state dict (less the resample
    filters, which the config makes), as NVIDIA's own port (stylegan2-ada-pytorch's legacy.py) converts it: its
    kwargs refused by name where we do not implement them, every parameter we need looked up by its TF name (a
    missing one named), and every TF variable accounted for."""
    from .checkpoints import CheckpointError, check_config_sizes, tf_tensors, tf_variables

    config = _tf_config(net, source)
    check_config_sizes(config, source)
    variables = tf_variables(net)
    if any(name.startswith("synthesis/ToRGB_lod") for name in variables):
        raise CheckpointError(f"{source}: a StyleGAN2 config A-D network (ToRGB_lod layers), which NVIDIA's PyTorch "
                              f"port does not convert either; supported: {SUPPORTED}")
    with torch.device("meta"):
        expected = build_generator(config, source).state_dict()
    tensors = tf_tensors(expected, variables, _tf_source, source, f"a {config.img_resolution}px StyleGAN2 of its "
                         "settings", _TF_UNUSED_VARIABLES, SUPPORTED)
    return config, tensors


def save_stylegan_safetensors(G: Generator, path) -> None:
    from dataclasses import asdict

    from .checkpoints import save_safetensors

    meta = {"format": SAFETENSORS_FORMAT, "config": asdict(G.config)}
    if G.style_clip:
        meta["style_clip"] = G.style_clip
    save_safetensors(path, G.state_dict(), meta)


# --------------------------------------------------------------------------------------------------------------
# Generation helpers: seeds, labels, style mixing
# --------------------------------------------------------------------------------------------------------------
def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed, drawn exactly as NVlabs' gen_images.py does (numpy RandomState(seed).randn), so a seed
    gives the same image here as there."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()  # (N, z_dim)


def class_one_hot(labels: list[int], c_dim: int) -> torch.Tensor | None:
    if c_dim == 0:
        return None
    bad = [label for label in labels if not 0 <= label < c_dim]
    if bad:
        raise ValueError(f"class label {bad[0]} is out of range: this generator has {c_dim} classes (0..{c_dim - 1})")
    return F.one_hot(torch.tensor(labels), c_dim).float()  # (N, c_dim)


@torch.no_grad()
def conditional_w_avg(G: Generator, c: torch.Tensor, samples: int = 256, seed: int = 0) -> torch.Tensor:
    """The mean w of each label c (N, c_dim) -> (N, w_dim), over `samples` z from a fixed seed. Truncation toward
    the global w_avg pulls a conditional generator's images toward the average label, i.e. away from the prompt;
    truncating toward the label's own mean keeps the label (as conditional StyleGANs are usually sampled)."""
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(c.device)
    labels, index = torch.unique(c, dim=0, return_inverse=True)  # a batch usually repeats one prompt
    return torch.stack([G.mapping(z, label.expand(samples, -1))[:, 0].mean(0) for label in labels])[index]


def mapping_truncated(G: Generator, z: torch.Tensor, c: torch.Tensor | None, psi: float,
                      cutoff: int | None = None) -> torch.Tensor:
    """W+ for z and labels c with truncation psi: toward w_avg for unconditional generators and one-hot classes (as
    NVlabs samples), toward each label's own mean (conditional_w_avg) for a CLIP-conditioned generator."""
    if not G.style_clip or psi == 1:
        return G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
    ws = G.mapping(z, c)
    cutoff = ws.shape[1] if cutoff is None else cutoff
    out = ws.clone()
    out[:, :cutoff] = conditional_w_avg(G, c)[:, None].lerp(ws[:, :cutoff], psi)
    return out


def mix_styles(ws_a: torch.Tensor, ws_b: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """W+ of A with rows [start, end) taken from B (style mixing: coarse rows = pose/shape, fine rows = colour)."""
    if ws_a.shape != ws_b.shape:
        raise ValueError(f"style mixing needs W+ of equal shape, got {tuple(ws_a.shape)} and {tuple(ws_b.shape)}")
    num_ws = ws_a.shape[1]
    if not 0 <= start <= end <= num_ws:
        raise ValueError(f"'layer_start'/'layer_end' [{start}, {end}) is outside 0..{num_ws} (this generator has "
                         f"{num_ws} style layers; layer_start must not exceed layer_end)")
    out = ws_a.clone()
    out[:, start:end] = ws_b[:, start:end]
    return out


# Peak activation memory per output pixel during synthesis (float32, inference), measured order of magnitude with
# a 2x safety margin: StyleGAN3 keeps 2x-upsampled feature maps inside its alias-free nonlinearities.
BYTES_PER_PIXEL = {"stylegan2": 2048, "stylegan3": 8192}


def images_per_chunk(config: StyleGANConfig, free_bytes: float, most: int = 8) -> int:
    """How many images to synthesise at once so that activations fit in half of `free_bytes` (1 at least).
    A 1024² StyleGAN3 batch of 8 needs tens of GB on a CPU; generated one by one it fits."""
    per_image = BYTES_PER_PIXEL[config.arch] * config.img_resolution ** 2
    return int(max(1, min(most, free_bytes * 0.5 // per_image)))
