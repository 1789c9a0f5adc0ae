"""GANformer generator (Hudson & Zitnick 2021; dorarad/gansformer, its `pytorch_version/`), in pure PyTorch.

A StyleGAN2 generator whose latent is split into k components: k-1 local ones and one global one. The global
component modulates every convolution as StyleGAN2's w does; the local ones talk to the evolving feature grid through
*bipartite attention*: every grid position (query) attends over the k-1 components (keys / centroids) and the
attended values scale (or shift) that position's normalised features. Seen from the image, each layer's attention
says which component "owns" each pixel: those maps are what `attention_masks` returns.

    z (N, k, z_dim) --mapping--> ws (N, k, num_ws, w_dim) --synthesis--> image (N, C, H, W) in [-1, 1]
                                                                   \\--> attention (N, k-1, layers, heads, H, W)

Mapping: the global z goes through an MLP (`global_mlp`), the k-1 local ones, as a set, through another (`mlp`)
whose layers may be interleaved with self-attention between the components (`ltnt2ltnt`). Then, as StyleGAN2, each
w is broadcast to every layer and truncation pulls it toward the tracked mean `w_avg`.

Synthesis: StyleGAN2 blocks b4 … b{resolution} (the ops and equalized-lr layers of stylegan_ops.py), each 3x3
convolution optionally followed by the attention over the components ("simplex": queries against keys; "duplex",
`kmeans`: queries against learned centroids, k-means style), then noise, bias and activation. The last block has
one extra linear modulated convolution (`conv_last`, kept for compatibility with the TensorFlow version).

Parameter and buffer names are the reference's, so the state dict of its `Generator` loads here with
`strict=True`; the reference's TensorFlow pickles `(G, D, Gs)` are converted on load, by TF variable name, as its
PyTorch version's loader.py converts them (`_from_tf_network`, which lists where that converter is wrong and what
is refused). Implemented: the configuration its `--ganformer-default` trains (used for all of its pretrained
networks) and the options around it listed in `_MAPPING_OPTIONS` / `_SYNTHESIS_OPTIONS`; any other option is
refused by name (`check_options`) rather than guessed. Inference only: attention dropout and component dropout
are training-time noise and left out; fp16 does not exist in the reference's PyTorch version.

Shapes: z (N, k, z_dim); c (N, c_dim); ws (N, k, num_ws, w_dim), components first, the global one last;
images (N, C, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ck
from .stylegan_ops import (LRELU_GAIN, FullyConnectedLayer, NoiseMode, bias_act, conv2d_resample, modulated_conv2d,
                           setup_filter, upsample2d)

# --------------------------------------------------------------------------------------------------------------
# Configuration: the reference's constructor arguments, checked against what is implemented here
# --------------------------------------------------------------------------------------------------------------
ACTIVATIONS = ("lrelu", "relu", "linear")
ANY = None  # any value the constructor accepts (sizes: checked by the weights' shapes)

# mapping_kwargs / synthesis_kwargs of the reference's Generator, as its training script sets them: name -> the
# values implemented here (ANY: every value). A name not listed, or a value outside its tuple, is refused.
_MAPPING_OPTIONS: dict[str, tuple | None] = {
    "num_layers": ANY, "layer_dim": ANY, "embed_dim": ANY, "act": ACTIVATIONS, "lrmul": ANY, "w_avg_beta": ANY,
    "transformer": (True,), "resnet": (True, False), "shared": (False,), "ltnt2ltnt": (True, False),
    "ltnt_gate": (False,), "normalize_global": (True, False), "use_pos": (True, False), "num_heads": ANY,
    "attention_dropout": ANY,  # (training only)
}
_SYNTHESIS_OPTIONS: dict[str, tuple | None] = {
    "channel_base": ANY, "channel_max": ANY, "transformer": (True,), "start_res": ANY, "end_res": ANY,
    "architecture": ("orig", "skip", "resnet"), "resample_kernel": ANY, "latent_stem": (False,),
    "ltnt_stem": (False,), "style": (True, False), "local_noise": (True, False), "act": ACTIVATIONS,
    "use_pos": (True, False), "ltnt_gate": (False,), "img_gate": (False,), "num_heads": ANY,
    "attention_dropout": ANY,  # (training only)
    "norm": (None, "layer", "instance", "batch"), "integration": ("add", "mul"), "kmeans": (True, False),
    "kmeans_iters": ANY, "iterative": (False,), "pos_dim": ANY, "pos_type": ("sinus",), "pos_init": ANY,
    "pos_directions_num": (2,), "crop_ratio": (None, 1.0),
    "dim_base": ANY,  # set by the reference's --autotune but read by no constructor: no effect
}
# Generator arguments the reference's constructor swallows without effect (its training script passes its whole
# network config: the optimizer, the regularisation interval, the crop ratio), or uses only in training.
_IGNORED_GENERATOR_ARGS = ("component_dropout", "reg_interval", "opt_args", "crop_ratio")
_WHY = {"transformer": "without it the network is a StyleGAN2 baseline, not a GANformer",
        "integration": "'both' splits its gain and bias wrongly in the reference",
        "iterative": "centroids carried across layers", "latent_stem": "the GAN baseline",
        "pos_type": "only the default sinusoidal grid encoding is implemented"}


@dataclass(frozen=True)
class GANformerConfig:
    """The reference `Generator`'s constructor arguments (its names; `k` counts the global component too)."""

    z_dim: int  # per component
    c_dim: int
    w_dim: int  # per component
    k: int
    img_resolution: int
    img_channels: int
    mapping_kwargs: dict[str, Any] = field(default_factory=dict)
    synthesis_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_options(self)


def check_options(config: GANformerConfig) -> None:
    """Refuse, naming them, the options this implementation does not have (ValueError)."""
    bad = []
    for where, options, given in (("mapping_kwargs", _MAPPING_OPTIONS, config.mapping_kwargs),
                                  ("synthesis_kwargs", _SYNTHESIS_OPTIONS, config.synthesis_kwargs)):
        for name, value in given.items():
            if name not in options:
                bad.append(f"{where}.{name} (unknown option)")
            elif options[name] is not ANY and value not in options[name]:
                why = f"; {_WHY[name]}" if name in _WHY else ""
                bad.append(f"{where}.{name}={value!r} (supported: {', '.join(map(repr, options[name]))}{why})")
    for where, given in (("mapping_kwargs", config.mapping_kwargs), ("synthesis_kwargs", config.synthesis_kwargs)):
        if "transformer" not in given:  # (the reference's default is False)
            bad.append(f"{where}.transformer not set ({_WHY['transformer']})")
    if config.k < 2:
        bad.append(f"k={config.k} (a GANformer has at least one local component besides the global one)")
    iters = config.synthesis_kwargs.get("kmeans_iters", 1)
    if not isinstance(iters, int) or not 1 <= iters <= 16:
        bad.append(f"synthesis_kwargs.kmeans_iters={iters!r} (1 to 16)")
    if bad:
        raise ValueError("unsupported GANformer configuration: " + "; ".join(bad))


# --------------------------------------------------------------------------------------------------------------
# Bipartite attention (the reference's TransformerLayer)
# --------------------------------------------------------------------------------------------------------------
def grid_encoding(resolution: int, dim: int) -> torch.Tensor:
    """Sinusoidal 2-D position encoding of a resolution² grid, (H, W, dim): for coordinates x, y in [-1, 1] and
    i < dim/4, [sin(x/10000^(4i/dim)), cos(x/…), sin(y/…), cos(y/…)] (x runs along the width)."""
    c = torch.linspace(-1.0, 1.0, resolution)[:, None]  # (R, 1)
    freq = torch.pow(10000.0, 4 * torch.arange(dim // 4, dtype=torch.float32) / dim)
    sin, cos = torch.sin(c / freq), torch.cos(c / freq)  # (R, dim/4)
    along_x = torch.cat([sin, cos], dim=-1)[None].expand(resolution, -1, -1)  # varies with the column
    along_y = torch.cat([sin, cos], dim=-1)[:, None].expand(-1, resolution, -1)  # varies with the row
    return torch.cat([along_x, along_y], dim=-1)  # (R, R, dim)


class Attention(nn.Module):
    """Elements of `from` (queries: grid positions, or latents in the mapping) attend over the elements of `to`
    (the latent components); the attended values modulate `from`'s normalised features.

    scores = q·kᵀ / √head_size, probs = softmax over `to`, control = probs·v, and then, by `integration`,
    from ← norm(from) · (1 + modulation(control))  ('mul')   or   from ← norm(from) + modulation(control)  ('add').
    `norm`: none, 'layer' (over channels), 'instance' (over positions); 'add' subtracts the mean, 'mul' divides by
    the root mean square.

    Duplex (`kmeans`): the scores are taken against learned centroids instead of the keys: with the queries split
    into their content part and their position part e = [q, q_pos − q] (concatenated, then cut into heads: with
    several heads, a head gets a slice of that concatenation, not its own content and position parts),
    scores = (e ⊙ att_weight)·centroidsᵀ / √head_size; each further k-means iteration moves the centroids to the
    attention-weighted mean of e. The keys (`to_keys`, `to_pos_map`) exist in this mode but are never used.
    """

    def __init__(self, dim: int, pos_dim: int, from_dim: int, to_dim: int, to_len: int, num_heads: int = 1,
                 integration: str = "add", norm: str | None = None, kmeans: bool = False, kmeans_iters: int = 1):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention width {dim} does not split into {num_heads} heads")
        self.dim, self.num_heads, self.head_size = dim, num_heads, dim // num_heads
        self.integration, self.norm, self.kmeans, self.kmeans_iters = integration, norm, kmeans, kmeans_iters
        self.to_queries = FullyConnectedLayer(from_dim, dim)
        self.to_keys = FullyConnectedLayer(to_dim, dim)
        self.to_values = FullyConnectedLayer(to_dim, dim)
        self.from_pos_map = FullyConnectedLayer(pos_dim, dim)
        self.to_pos_map = FullyConnectedLayer(pos_dim, dim)
        self.modulation = FullyConnectedLayer(dim, dim)
        if kmeans:
            centroid_dim = 2 * self.head_size
            self.att_weight = nn.Parameter(torch.ones(num_heads, 1, centroid_dim))
            self.centroids = nn.Parameter(torch.randn(1, num_heads, to_len, centroid_dim))

    @staticmethod
    def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # a layer on every element: (N, L, C) -> (N, L, D)
        return layer(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, heads, L, D / heads)
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:  # x (N, L, C)
        if self.norm is None:
            return x
        axis = 1 if self.norm == "instance" else 2  # ('batch' normalises as 'layer' in the reference)
        if self.integration == "add":
            return x - x.mean(dim=axis, keepdim=True)
        return x * (x.square().mean(dim=axis, keepdim=True) + 1e-8).rsqrt()

    def forward(self, x: torch.Tensor, to: torch.Tensor, from_pos: torch.Tensor | None = None,
                to_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, F, from_dim), to (N, T, to_dim), positions (F, pos_dim) / (T, pos_dim) -> (x', probs (N, h, F, T))."""
        n, f = x.shape[:2]
        queries = content = self._rows(self.to_queries, x)  # (N, F, D)
        values = self._rows(self.to_values, to)  # (N, T, D)
        if from_pos is not None:
            queries = queries + self.from_pos_map(from_pos)
        if self.kmeans:
            # the position part recovered as a difference, as the reference does (the same up to rounding)
            elements = self._heads(torch.cat([content, queries - content], dim=-1))  # (N, h, F, 2 * head)
            centroids = self.centroids.expand(n, -1, -1, -1)  # (N, h, T, 2 * head)
            probs = None
            for i in range(self.kmeans_iters):
                if i > 0:  # move each centroid to the attention-weighted mean of the elements assigned to it
                    assignments = probs / (probs.sum(dim=-2, keepdim=True) + 1e-8)  # (N, h, F, T)
                    centroids = assignments.transpose(-1, -2) @ elements
                scores = (elements * self.att_weight) @ centroids.transpose(-1, -2) / math.sqrt(self.head_size)
                probs = scores.softmax(dim=-1)  # (N, h, F, T)
        else:
            keys = self._rows(self.to_keys, to)
            if to_pos is not None:
                keys = keys + self.to_pos_map(to_pos)
            scores = self._heads(queries) @ self._heads(keys).transpose(-1, -2) / math.sqrt(self.head_size)
            probs = scores.softmax(dim=-1)  # (N, h, F, T)
        control = (probs @ self._heads(values)).transpose(1, 2).reshape(n, f, self.dim)  # (N, F, D)
        control = self._rows(self.modulation, control)
        x = self._normalize(x.float())
        x = x * (control + 1) if self.integration == "mul" else x + control
        return x, probs


# --------------------------------------------------------------------------------------------------------------
# Mapping network
# --------------------------------------------------------------------------------------------------------------
def normalize_2nd_moment_all(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / RMS(x) over every dimension but the batch: the k-1 local z are normalised *jointly*, as one vector."""
    dims = list(range(1, x.ndim))
    return x * (x.square().mean(dim=dims, keepdim=True) + eps).rsqrt()


class ResnetLayer(nn.Module):
    """x -> lrelu(fc1(fc0(x)) + residual) (plain leaky ReLU, no gain)."""

    def __init__(self, dim: int, act: str, lrmul: float):
        super().__init__()
        self.fc0 = FullyConnectedLayer(dim, dim, activation=act, lr_multiplier=lrmul)
        self.fc1 = FullyConnectedLayer(dim, dim, lr_multiplier=lrmul)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.fc1(self.fc0(x)) + residual, 0.2)


class MLP(nn.Module):
    """Layers l0…l{n-1} (fully connected, or residual pairs: then n = len(channels) // 2) and a final `out_layer`,
    applied to every element of a set (N, L, C); with `attention`, self-attention over the set (sa{i}) before each
    layer, whose residual is the input before that attention."""

    def __init__(self, channels: list[int], act: str, lrmul: float, resnet: bool = False,
                 attention: dict | None = None):
        super().__init__()
        self.resnet, self.self_attention = resnet, attention is not None
        self.num_layers = len(channels) // 2 if resnet else len(channels) - 1
        self.out_layer = FullyConnectedLayer(channels[-1], channels[-1], activation=act, lr_multiplier=lrmul)
        for i in range(self.num_layers):
            c_in, c_out = channels[i], channels[i + 1]
            if attention is not None:
                setattr(self, f"sa{i}", Attention(c_in, c_in, c_in, c_in, **attention))
            if resnet:
                if c_in != c_out:
                    raise ValueError(f"a residual mapping network needs equal widths, got {c_in} and {c_out}")
                setattr(self, f"l{i}", ResnetLayer(c_in, act, lrmul))
            else:
                setattr(self, f"l{i}", FullyConnectedLayer(c_in, c_out, activation=act, lr_multiplier=lrmul))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:  # x (N, L, C)
        n, length = x.shape[:2]
        for i in range(self.num_layers):
            residual = x
            if self.self_attention:
                x = getattr(self, f"sa{i}")(x, x, pos, pos)[0]
            layer = getattr(self, f"l{i}")
            flat = x.reshape(n * length, -1)
            x = layer(flat, residual.reshape(n * length, -1)) if self.resnet else layer(flat)
            x = x.reshape(n, length, -1)
        return self.out_layer(x.reshape(n * length, -1)).reshape(n, length, -1)


class MappingNetwork(nn.Module):
    """z (N, k, z_dim) [+ label c] -> ws (N, k, num_ws, w_dim), with truncation toward `w_avg`.

    The last z is the global one: normalised alone (with the label embedding concatenated) through `global_mlp`.
    The first k-1 are normalised together and mapped as a set through `mlp` (with self-attention between them if
    `ltnt2ltnt`; position embeddings `pos` if `use_pos`)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, k: int, num_ws: int, num_layers: int = 8,
                 embed_dim: int | None = None, layer_dim: int | None = None, act: str = "lrelu",
                 lrmul: float = 0.01, w_avg_beta: float | None = 0.995, resnet: bool = False, ltnt2ltnt: bool = False,
                 normalize_global: bool = True, use_pos: bool = False, num_heads: int = 1, **_training_only):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.k, self.num_ws = z_dim, c_dim, w_dim, k, num_ws
        self.normalize_global, self.use_pos = normalize_global, use_pos
        embed_dim = (embed_dim or z_dim) if c_dim > 0 else 0
        layers = [layer_dim or w_dim] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_dim)
        self.global_mlp = MLP([z_dim + embed_dim] + layers, act, lrmul, resnet)
        attention = dict(to_len=k - 1, num_heads=num_heads) if ltnt2ltnt else None
        self.mlp = MLP([z_dim] + layers, act, lrmul, resnet, attention)
        if use_pos and ltnt2ltnt and set([z_dim] + layers) != {w_dim}:
            raise ValueError("latent position embeddings in the mapping need z_dim, layer_dim and w_dim equal")
        self.has_w_avg = w_avg_beta is not None
        if self.has_w_avg:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> torch.Tensor:
        if z.ndim != 3 or z.shape[1:] != (self.k, self.z_dim):
            raise ValueError(f"z must be (N, {self.k}, {self.z_dim}) (k components), got {tuple(z.shape)}")
        local, g = z.float().split([self.k - 1, 1], dim=1)  # (N, k-1, z), (N, 1, z)
        if self.normalize_global:
            g = normalize_2nd_moment_all(g)
        local = normalize_2nd_moment_all(local)
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim={self.c_dim}); give a label")
            y = normalize_2nd_moment_all(self.embed(c.float()))
            g = torch.cat([g, y[:, None]], dim=-1)
        w = torch.cat([self.mlp(local, pos if self.use_pos else None), self.global_mlp(g)], dim=1)  # (N, k, w)
        ws = w[:, :, None].repeat(1, 1, self.num_ws, 1)  # (N, k, num_ws, w)
        if truncation_psi != 1:
            if not self.has_w_avg:
                raise ValueError("this generator tracks no average w (w_avg_beta=None): truncation is unavailable")
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :, :cutoff] = self.w_avg.lerp(ws[:, :, :cutoff], truncation_psi)
        return ws


# --------------------------------------------------------------------------------------------------------------
# Synthesis network
# --------------------------------------------------------------------------------------------------------------
class BiasAct(nn.Module):
    """act(x + bias) * gain (the reference keeps the bias in this submodule: `<layer>.biasAct.bias`)."""

    def __init__(self, channels: int, act: str = "linear", gain: float = 1.0, bias: bool = True):
        super().__init__()
        self.act, self.gain = act, (1.0 if act == "linear" else LRELU_GAIN) * gain
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, act=self.act, gain=self.gain)


class SynthesisLayer(nn.Module):
    """3x3 convolution (modulated by the global w if `style`, else plain; optional 2x up), then the attention
    over the local components (if `transformer`), noise, bias and activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, k: int, resolution: int, up: int = 1,
                 resample_kernel=(1, 3, 3, 1), style: bool = True, local_noise: bool = True, bias: bool = True,
                 act: str = "lrelu", gain: float = 1.0, transformer: bool = False, use_pos: bool = False,
                 pos_dim: int | None = None, num_heads: int = 1, integration: str = "add", norm: str | None = None,
                 kmeans: bool = False, kmeans_iters: int = 1):
        super().__init__()
        self.resolution, self.up, self.style = resolution, up, style
        self.local_noise, self.use_pos = local_noise, use_pos
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1 / math.sqrt(in_channels * 9)
        self.biasAct = BiasAct(out_channels, act, gain) if bias else None
        self.register_buffer("resample_kernel", setup_filter(resample_kernel))
        if local_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.transformer = None
        if transformer:
            pos_dim = pos_dim or w_dim
            if pos_dim % 4:
                raise ValueError(f"the grid position encoding needs a width divisible by 4, got pos_dim={pos_dim}")
            self.register_buffer("grid_pos", grid_encoding(resolution, pos_dim))  # (H, W, pos_dim)
            self.transformer = Attention(out_channels, pos_dim, out_channels, w_dim, to_len=k - 1, num_heads=num_heads,
                                         integration=integration, norm=norm, kmeans=kmeans, kmeans_iters=kmeans_iters)

    def forward(self, x: torch.Tensor, w: torch.Tensor, pos: torch.Tensor | None = None,
                noise_mode: NoiseMode = "const", generator: torch.Generator | None = None):
        """x (N, I, h, w); w (N, k, w_dim) -> x (N, O, H, W), attention (N, heads, H*W, k-1) or None."""
        weight = self.weight * self.weight_gain
        if self.style:
            x = modulated_conv2d(x, weight, self.affine(w[:, -1]), up=self.up, padding=1,
                                 resample_filter=self.resample_kernel)
        else:
            x = conv2d_resample(x, weight, self.resample_kernel, up=self.up, padding=1)
        probs = None
        if self.transformer is not None:
            n, c, h, wd = x.shape
            grid = x.reshape(n, c, h * wd).transpose(1, 2)  # (N, HW, C)
            grid, probs = self.transformer(grid, w[:, :-1], self.grid_pos.reshape(h * wd, -1),
                                           pos if self.use_pos else None)
            x = grid.transpose(1, 2).reshape(n, c, h, wd)
        if self.local_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif self.local_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator,
                                device=x.device if generator is None else generator.device).to(x.device)
            x = x + noise * self.noise_strength
        elif noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        if self.biasAct is not None:
            x = self.biasAct(x)
        return x, probs


class ToRGBLayer(nn.Module):
    """1x1 convolution to the image channels, modulated (not demodulated) by the global w if `style`."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, style: bool = True):
        super().__init__()
        self.style = style
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.biasAct = BiasAct(out_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.style:
            x = modulated_conv2d(x, self.weight, self.affine(w[:, -1]) * self.weight_gain, demodulate=False)
        else:
            x = F.conv2d(x, self.weight * self.weight_gain)
        return self.biasAct(x).float()


class SkipLayer(nn.Module):
    """The 'resnet' architecture's shortcut: 1x1 convolution, 2x FIR upsampling, times √½ (no bias)."""

    def __init__(self, in_channels: int, out_channels: int, resample_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.register_buffer("resample_kernel", setup_filter(resample_kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2d(F.conv2d(x, self.weight * self.weight_gain), self.resample_kernel) * math.sqrt(0.5)


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (2x up)] -> conv1 [-> + skip] [-> conv_last] -> torgb.

    W rows: conv0, conv1, conv_last (last block only), torgb; a 'skip' block's torgb shares its row with the next
    block's conv0 (as StyleGAN2's); in 'resnet' and 'orig' only the last block has a torgb."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, k: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_kernel=(1, 3, 3, 1), style: bool = True,
                 **layer_kwargs):
        super().__init__()
        self.in_channels, self.is_last, self.architecture = in_channels, is_last, architecture
        self.register_buffer("resample_kernel", setup_filter(resample_kernel))
        common = dict(w_dim=w_dim, k=k, resolution=resolution, resample_kernel=resample_kernel, style=style)
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **common, **layer_kwargs)
            self.num_conv += 1
        gain = math.sqrt(0.5) if architecture == "resnet" and in_channels else 1.0
        self.conv1 = SynthesisLayer(out_channels, out_channels, gain=gain, **common, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, style=style)
            self.num_torgb += 1
        if in_channels and architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, resample_kernel)
        if is_last:  # linear: no attention, no noise, no bias, no activation
            last = {**layer_kwargs, "transformer": False, "local_noise": False, "bias": False}
            self.conv_last = SynthesisLayer(out_channels, out_channels, **common, **last)
            self.num_conv += 1

    def forward(self, x, img, ws: torch.Tensor, pos: torch.Tensor, noise_mode: NoiseMode = "const",
                generator: torch.Generator | None = None):
        """ws (N, k, rows, w_dim) -> x, img, [attention of conv0, of conv1]."""
        w_rows = iter(ws.unbind(dim=2))
        kw = dict(pos=pos, noise_mode=noise_mode, generator=generator)
        maps = []
        if self.in_channels == 0:
            x, probs = self.conv1(self.const[None].repeat(ws.shape[0], 1, 1, 1), next(w_rows), **kw)
            maps.append(probs)
        else:
            shortcut = self.skip(x) if self.architecture == "resnet" else None
            for layer in (self.conv0, self.conv1):
                x, probs = layer(x, next(w_rows), **kw)
                maps.append(probs)
            if shortcut is not None:
                x = shortcut + x
        if img is not None:
            img = upsample2d(img, self.resample_kernel)
        if self.is_last:
            x = self.conv_last(x, next(w_rows), **kw)[0]
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_rows))
            img = img + y if img is not None else y
        return x, img, maps


class SynthesisNetwork(nn.Module):
    """ws (N, k, num_ws, w_dim) -> image, and the attention maps of every attention layer at the image size.
    Attention at the resolutions 2^start_res <= res < 2^end_res."""

    def __init__(self, w_dim: int, k: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, transformer: bool = True, start_res: int = 0, end_res: int = 20,
                 num_heads: int = 1, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"GANformer resolution must be a power of two >= 4, got {img_resolution}")
        for name in ("attention_dropout", "dim_base", "pos_init", "pos_type", "pos_directions_num", "crop_ratio",
                     "latent_stem", "ltnt_stem", "ltnt_gate", "img_gate", "iterative"):
            block_kwargs.pop(name, None)  # (defaults, or without effect at inference: checked by check_options)
        self.k, self.img_resolution, self.num_heads = k, img_resolution, num_heads
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {r: int(min(channel_base // r, channel_max)) for r in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            attention = transformer and start_res <= math.log2(res) < end_res
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, k, res, img_channels,
                                   is_last=res == img_resolution, transformer=attention, num_heads=num_heads,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, pos: torch.Tensor, noise_mode: NoiseMode = "const",
                generator: torch.Generator | None = None, return_attention: bool = False):
        if ws.ndim != 4 or ws.shape[1:3] != (self.k, self.num_ws):
            raise ValueError(f"ws must be (N, {self.k}, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        ws = ws.float()
        x = img = None
        maps, row = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img, block_maps = block(x, img, ws.narrow(2, row, block.num_conv + block.num_torgb), pos,
                                       noise_mode=noise_mode, generator=generator)
            maps += [m for m in block_maps if m is not None]
            row += block.num_conv
        if not return_attention:
            return img
        return img, self._maps_at_image_size(maps)

    def _maps_at_image_size(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """[(N, heads, h*w, k-1) per attention layer] -> (N, k-1, layers, heads, H, W), nearest-neighbour upsampled."""
        out = []
        for probs in maps:
            n, heads, hw, comps = probs.shape
            side = math.isqrt(hw)
            grid = probs.transpose(2, 3).reshape(n, heads * comps, side, side)
            factor = self.img_resolution // side
            grid = grid.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
            out.append(grid.reshape(n, heads, comps, self.img_resolution, self.img_resolution))
        if not out:
            raise ValueError("this generator has no attention layers (start_res/end_res exclude every resolution)")
        return torch.stack(out, dim=1).permute(0, 3, 1, 2, 4, 5)  # (N, k-1, layers, heads, H, W)


class Generator(nn.Module):
    """mapping (z [, c] -> ws) + synthesis (ws -> image [, attention]). `pos` (k-1, w_dim): position embeddings of
    the local components, for the attention layers that `use_pos`. Names as the reference's `Gs`."""

    def __init__(self, config: GANformerConfig):
        super().__init__()
        self.config = config
        self.style_clip = ""  # a text-conditioned zoo GANformer: the CLIP whose embeddings are its labels
        self.z_dim, self.c_dim, self.w_dim, self.k = config.z_dim, config.c_dim, config.w_dim, config.k
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        self.pos = nn.Parameter(torch.rand(config.k - 1, config.w_dim))
        self.synthesis = SynthesisNetwork(config.w_dim, config.k, config.img_resolution, config.img_channels,
                                          **config.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        mapping = {name: v for name, v in config.mapping_kwargs.items() if name not in ("transformer", "shared",
                                                                                         "ltnt_gate")}
        self.mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, config.k, self.num_ws, **mapping)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: NoiseMode = "const",
                generator: torch.Generator | None = None, return_attention: bool = False):
        ws = self.mapping(z, c, self.pos, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, self.pos, noise_mode=noise_mode, generator=generator,
                              return_attention=return_attention)


# --------------------------------------------------------------------------------------------------------------
# Sampling helpers and attention masks
# --------------------------------------------------------------------------------------------------------------
def z_from_seeds(seeds: list[int], k: int, z_dim: int) -> torch.Tensor:
    """(N, k, z_dim): one z per seed, standard normal as the reference's generate.py draws it
    (`torch.randn([1, k, z_dim])`; its script seeds nothing: here the seed seeds a CPU generator)."""
    return torch.cat([torch.randn(1, k, z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def attention_masks(attention: torch.Tensor, layer: int | None = -1) -> torch.Tensor:
    """(N, k-1, layers, heads, H, W) from `G(…, return_attention=True)` -> (N, k-1, H, W): how much each pixel
    attends to each local component, in [0, 1] and summing to 1 over the components at every pixel. `layer`:
    one attention layer (default the last, the one the reference's visualisations draw), or None for the mean over
    all layers. Heads are averaged."""
    maps = attention.mean(dim=3)  # (N, k-1, layers, H, W)
    return maps.mean(dim=2) if layer is None else maps[:, :, layer]


# --------------------------------------------------------------------------------------------------------------
# Loading: the reference's training snapshots (`Gs`, else `G`); its TensorFlow pickles further below
# --------------------------------------------------------------------------------------------------------------
SUPPORTED = ("GANformer snapshots written by dorarad/gansformer's PyTorch training (network-snapshot-*.pkl) and its "
             "TensorFlow network pickles (G, D, Gs), in its --ganformer-default configuration and the options around "
             "it")
_REQUIRED = ("z_dim", "c_dim", "w_dim", "k", "img_resolution", "img_channels")


def _plain(value):
    """Pickled settings as plain Python: numpy scalars to numbers, EasyDicts to dicts, lists to tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def config_from_record(record: ck.PersistentRecord, source: str) -> GANformerConfig:
    """The architecture from a reference `Generator` record's constructor arguments."""
    if record.class_name != "Generator":
        raise ck.CheckpointError(f"{source}: the network is a '{record.class_name}', not a GANformer Generator")
    if record.state.get("_init_args"):
        raise ck.CheckpointError(f"{source}: unexpected positional constructor arguments; supported: {SUPPORTED}")
    kwargs = _plain(dict(record.state.get("_init_kwargs") or {}))
    missing = [name for name in _REQUIRED if name not in kwargs]
    if missing:
        hint = " (a StyleGAN generator? use the StyleGAN loader)" if missing == ["k"] else ""
        raise ck.CheckpointError(f"{source}: the Generator record lacks {', '.join(missing)}{hint}; "
                                 f"supported: {SUPPORTED}")
    unknown = sorted(set(kwargs) - set(_REQUIRED) - {"mapping_kwargs", "synthesis_kwargs"}
                     - set(_IGNORED_GENERATOR_ARGS))
    if unknown:
        raise ck.CheckpointError(f"{source}: unsupported GANformer configuration: unknown Generator option(s) "
                                 f"{', '.join(unknown)}; supported: {SUPPORTED}")
    sub = {name: kwargs.get(name) or {} for name in ("mapping_kwargs", "synthesis_kwargs")}
    if not all(isinstance(v, dict) for v in sub.values()):
        raise ck.CheckpointError(f"{source}: mapping_kwargs / synthesis_kwargs are not dictionaries")
    try:
        values = [kwargs[name] for name in _REQUIRED]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{', '.join(_REQUIRED)} must be integers")
        return GANformerConfig(*values, **sub)
    except ValueError as e:
        raise ck.CheckpointError(f"{source}: {e}; supported: {SUPPORTED}") from None


@ck.user_file_loader("GANformer generator", (".pkl",))
def load_ganformer(path, device: str | torch.device = "cpu") -> Generator:
    """Load the EMA generator (`Gs`) of a GANformer network pickle, strictly, without executing code: a PyTorch
    training snapshot (its `Gs` record, else `G`), or a TensorFlow pickle `(G, D, Gs)`, whose `Gs` is converted
    as the reference's PyTorch loader converts it (`_from_tf_network`: its variables by their TF names, its
    settings from static_kwargs; the TF build source is dropped unread)."""
    path = Path(path)
    source = path.name
    if path.suffix.lower() != ".pkl":
        raise ck.CheckpointError(f"{source}: a GANformer snapshot is a .pkl file (network-snapshot-*.pkl)")
    data = ck.load_nvidia_pickle(path)
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, ck.TFNetworkRecord) for n in data):
        config, tensors = _from_tf_network(data[2], source)  # (G, D, Gs): Gs, the EMA generator
        G = ck.build_checked(lambda: Generator(config), tensors, source, config,
                             computed=("resample_kernel", "grid_pos"))
        return G.eval().requires_grad_(False).to(device)
    record = None
    if isinstance(data, dict):
        record = next((data[k] for k in ("Gs", "G") if isinstance(data.get(k), ck.PersistentRecord)), None)
    if record is None:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        hint = " (an NVIDIA StyleGAN pickle: use the StyleGAN loader)" if isinstance(data, dict) and "G_ema" in data \
            else ""
        raise ck.CheckpointError(f"{source}: no 'Gs' or 'G' network in the pickle (found: {keys}){hint}; "
                                 f"supported: {SUPPORTED}")
    config = config_from_record(record, source)
    tensors = ck.record_tensors(record)
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}
    G = ck.build_checked(lambda: Generator(config), tensors, source, config)
    ours = data.get("diffugan") if isinstance(data, dict) else None  # what scripts/train_zoo_ganformer.py adds
    if isinstance(ours, dict) and isinstance(ours.get("style_clip"), str):
        G.style_clip = ours["style_clip"]
    return G.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------------------------
# TensorFlow pickles: the `(G, D, Gs)` networks of dorarad/gansformer's TensorFlow version, converted as its
# PyTorch version's loader.py (`convert_tf_generator`) converts them, except where that converter is wrong
# --------------------------------------------------------------------------------------------------------------
_BOOL = (True, False)


def _fixed(default, *allowed):
    """A TF setting with no counterpart in the PyTorch generator: accepted only at the value(s) it can stand at."""
    return (None, default, allowed or (default,))


# TF kwarg -> (our setting(s) it gives: "name" of the Generator, "mapping.name" / "synthesis.name", several
# separated by spaces, or None; TF's default; the values converted, or ANY). Both spellings of the two TF versions
# (training/network.py: latent_size, fmap_base, ...; training/networks.py: z_dim, channel_base, ...) are read.
# The defaults are those of TF's G_mapping / G_synthesis signatures (where loader.py's differ, TF's are right:
# a setting missing from the pickle took TF's default when the network was built).
_TF_KWARGS: dict[str, tuple[str | None, Any, tuple | None]] = {
    **{name: ("z_dim", 512, ANY) for name in ("latent_size", "z_dim")},
    **{name: ("w_dim", 512, ANY) for name in ("dlatent_size", "w_dim")},
    **{name: ("c_dim", 0, (0,)) for name in ("label_size", "c_dim")},
    "components_num": ("k", 1, ANY), "resolution": ("img_resolution", 1024, ANY),
    "num_channels": ("img_channels", 3, ANY),
    **{name: ("mapping.num_layers", 8, ANY) for name in ("mapping_layersnum", "mapping_num_layers")},
    "mapping_lrmul": ("mapping.lrmul", 0.01, ANY), "mapping_nonlinearity": ("mapping.act", "lrelu", ACTIVATIONS),
    "mapping_resnet": ("mapping.resnet", False, (True,)), "mapping_ltnt2ltnt": ("mapping.ltnt2ltnt", False, _BOOL),
    "num_heads": ("mapping.num_heads synthesis.num_heads", 1, ANY),
    "use_pos": ("mapping.use_pos synthesis.use_pos", False, _BOOL),
    **{name: ("synthesis.channel_base", 16 << 10, ANY) for name in ("fmap_base", "channel_base")},
    **{name: ("synthesis.channel_max", 512, ANY) for name in ("fmap_max", "channel_max")},
    "architecture": ("synthesis.architecture", "skip", ("orig", "skip", "resnet")),
    "nonlinearity": ("synthesis.act", "lrelu", ACTIVATIONS),
    "resample_kernel": ("synthesis.resample_kernel", (1, 3, 3, 1), ANY),
    "style": ("synthesis.style", True, _BOOL), "local_noise": ("synthesis.local_noise", True, _BOOL),
    "transformer": ("synthesis.transformer", False, (True,)),
    "integration": ("synthesis.integration", "add", ("add", "mul")),
    "norm": ("synthesis.norm", None, (None, "layer", "instance", "batch")),
    "kmeans": ("synthesis.kmeans", False, _BOOL), "kmeans_iters": ("synthesis.kmeans_iters", 1, ANY),
    "start_res": ("synthesis.start_res", 0, ANY), "end_res": ("synthesis.end_res", 20, ANY),
    "pos_dim": ("synthesis.pos_dim", None, ANY), "crop_ratio": ("synthesis.crop_ratio", None, (None, 1.0)),
    "mapping_dim": _fixed(None), "mapping_shared_dim": _fixed(0, 0, None), "normalize_latents": _fixed(True),
    "fmap_decay": _fixed(1.0), "fmap_min": _fixed(1), "latent_stem": _fixed(False), "tanh": _fixed(False),
    "iterative": _fixed(False), "ltnt_gate": _fixed(False), "img_gate": _fixed(False), "img2img": _fixed(0),
    "img2ltnt": _fixed(False), "ltnt2ltnt": _fixed(False), "local_attention": _fixed(0), "merge": _fixed(False),
    "pos_type": _fixed("sinus"), "pos_directions_num": _fixed(2), "mapping_func": _fixed("G_mapping"),
    "synthesis_func": _fixed("G_synthesis"),
    # no effect on a drawn image: training, sampling and k-GAN merging (merge is off) settings
    **{name: (None, None, ANY) for name in (
        "pos_init", "merge_layer", "merge_type", "merge_same", "fused_modconv", "randomize_noise", "noise_mode",
        "attention_dropout", "truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
        "dlatent_avg_beta", "w_avg_beta", "style_mixing", "component_mixing", "component_dropout")},
}
_TF_WHY = {
    "label_size": "TF's G_mapping concatenates the label embedding as extra latents (along the component axis), "
                  "which its own split into local and global latents then rejects: no conditional TF GANformer can "
                  "be built, and loader.py's mapping of it (LabelConcat as embed, a zero bias) is not TF's",
    "mapping_resnet": "TF's plain mapping has one layer fewer than the PyTorch generator's",
    "mapping_dim": "TF then adds map_start / map_end / map_pos layers the PyTorch generator lacks",
    "mapping_shared_dim": "a shared mapping (inmap / outmap) is not in the PyTorch generator",
    "normalize_latents": "the PyTorch generator always normalises z",
    "transformer": _WHY["transformer"], "integration": _WHY["integration"], "iterative": _WHY["iterative"],
    "latent_stem": _WHY["latent_stem"], "merge": "the k-GAN baseline", "img2img": "the SAGAN baseline",
}
_TF_WHY["c_dim"] = _TF_WHY["label_size"]
_TF_ATTENTION = {"to_queries": "query", "to_keys": "key", "to_values": "value", "from_pos_map": "from_pos",
                 "to_pos_map": "to_pos", "modulation": "out"}


def _one_of(value, allowed) -> bool:
    try:
        return bool(value in allowed)
    except (TypeError, ValueError):  # (e.g. an array: never a valid setting)
        return False


def _tf_config(net, source: str) -> GANformerConfig:
    """The architecture from a TF generator's static_kwargs: every TF setting the PyTorch generator has a
    counterpart for is carried over (TF's default where the pickle lacks it), the others must stand at a value
    the conversion is faithful at; anything else is refused by its TF name."""
    if net.version < 4:
        raise ck.CheckpointError(f"{source}: a TensorFlow network pickle of format version {net.version}; "
                                 f"supported: {SUPPORTED}")
    kwargs = {name: _plain(value) for name, value in net.static_kwargs.items()}
    if "components_num" not in kwargs:
        raise ck.CheckpointError(f"{source}: the TensorFlow network has no components_num: not a GANformer (a "
                                 f"StyleGAN TensorFlow pickle? use the StyleGAN loader); supported: {SUPPORTED}")
    unknown = sorted(set(kwargs) - set(_TF_KWARGS))
    bad = [f"{name} (unknown setting)" for name in unknown]
    values: dict[str, Any] = {}
    for tf_name, (targets, default, allowed) in _TF_KWARGS.items():
        given = tf_name in kwargs
        value = kwargs.get(tf_name, default)
        if allowed is not ANY and not _one_of(value, allowed):
            why = f"; {_TF_WHY[tf_name]}" if tf_name in _TF_WHY else ""
            bad.append(f"{tf_name}={value!r} (supported: {', '.join(map(repr, allowed))}{why})")
        for target in (targets or "").split():
            if given or target not in values:  # (of two spellings, the one given)
                values[target] = value
    layers, z_dim, w_dim = values["mapping.num_layers"], values["z_dim"], values["w_dim"]
    if not (isinstance(layers, int) and layers >= 2 and layers % 2 == 0):
        bad.append(f"mapping_layersnum / mapping_num_layers={layers!r} (TF's residual mapping has int(n/2) "
                   "residual layers, the PyTorch one n//2 + n%2: only even counts from 2 convert)")
    if z_dim != w_dim:
        bad.append(f"latent_size / z_dim={z_dim!r} with dlatent_size / w_dim={w_dim!r} (a residual mapping needs "
                   "them equal)")
    if values["synthesis.kmeans"] and values["synthesis.kmeans_iters"] != 1:
        bad.append(f"kmeans_iters={values['synthesis.kmeans_iters']!r} with kmeans (TF keeps one st_weights per "
                   "k-means iteration, the PyTorch generator one for all)")
    if values["synthesis.use_pos"] and not _one_of(values["synthesis.pos_dim"], (None, w_dim)):
        bad.append(f"pos_dim={values['synthesis.pos_dim']!r} with use_pos (TF maps the latents' positions from "
                   "dlatent_size, the PyTorch generator from pos_dim)")
    resolution, end_res = values["img_resolution"], values["synthesis.end_res"]
    if isinstance(resolution, int) and resolution > 0 and isinstance(end_res, (int, float)) \
            and math.log2(resolution) > end_res:
        bad.append(f"end_res={end_res!r} below log2(resolution) (TF then has no ToRGB/extraLayer, which the "
                   "PyTorch generator always applies)")
    if bad:
        raise ck.CheckpointError(f"{source}: unsupported TensorFlow GANformer settings: {'; '.join(bad)}; "
                                 f"supported: {SUPPORTED}")
    top = [values[name] for name in ("z_dim", "c_dim", "w_dim", "k", "img_resolution", "img_channels")]
    sizes = top + [values["synthesis.channel_base"], values["synthesis.channel_max"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
        raise ck.CheckpointError(f"{source}: the TensorFlow network's sizes (latent_size, label_size, dlatent_size, "
                                 f"components_num, resolution, num_channels, fmap_base, fmap_max) must be integers; "
                                 f"supported: {SUPPORTED}")
    top[3] += 1  # TF counts the local components; the PyTorch k the global one too
    mapping = {name[8:]: v for name, v in values.items() if name.startswith("mapping.")}
    mapping.update(transformer=True, normalize_global=False, w_avg_beta=0.995)  # (TF always tracks w_avg)
    synthesis = {name[10:]: v for name, v in values.items() if name.startswith("synthesis.")}
    synthesis = {name: v for name, v in synthesis.items() if v is not None or name == "norm"}
    synthesis["channel_base"] = synthesis["channel_base"] * 2  # TF: base / 2^(log2(res) - 1) channels: 2 base / res
    try:
        return GANformerConfig(*top, mapping_kwargs=mapping, synthesis_kwargs=synthesis)
    except ValueError as e:
        raise ck.CheckpointError(f"{source}: {e}; supported: {SUPPORTED}") from None


def _tf_source(key: str, config: GANformerConfig) -> tuple[str | None, Any] | None:
    """Our parameter `key` -> (the TF variable holding it, how to turn it into ours); None for buffers the config
    computes (FIR kernels, grid encodings); (None, None) for a parameter these settings never read and TF does not
    create (the latent-position maps without use_pos): zeros. TF keeps dense weights (in, out), conv weights
    (kh, kw, in, out), modulation biases without their +1, the const with a leading 1; its upsampling convolutions
    are transposed ones, so their kernels are flipped."""
    import re

    dense = lambda a: a.T  # noqa: E731
    conv = lambda a: a.transpose(3, 2, 0, 1)  # noqa: E731
    flipped = lambda a: a[::-1, ::-1].transpose(3, 2, 0, 1)  # noqa: E731
    same = lambda a: a  # noqa: E731
    if key.endswith(("resample_kernel", "grid_pos")):
        return None
    if key in ("pos", "mapping.w_avg", "synthesis.b4.const"):
        return {"pos": ("ltnt_emb/emb", same), "mapping.w_avg": ("dlatent_avg", same),
                "synthesis.b4.const": ("synthesis/4x4/Const/const", lambda a: a[0])}[key]
    use_pos = config.synthesis_kwargs.get("use_pos", False)  # (one TF setting for mapping and synthesis)
    m = re.fullmatch(r"mapping\.(global_mlp|mlp)\.(?:l(\d+)\.fc([01])|out_layer)\.(weight|bias)", key)
    if m:  # TF: residual layer i = Dense{i}_0, Dense{i}_1; then Dense{n/2 - 1} (named after the last residual one)
        dense_scope = f"Dense{m[2]}_{m[3]}" if m[2] else f"Dense{config.mapping_kwargs['num_layers'] // 2 - 1}"
        scope = "mapping/" + ("global/" if m[1] == "global_mlp" else "") + dense_scope
        return f"{scope}/{m[4]}", dense if m[4] == "weight" else same
    m = re.fullmatch(r"mapping\.mlp\.sa(\d+)\.(.+)", key) or re.fullmatch(
        r"synthesis\.b(\d+)\.conv[01]\.transformer\.(.+)", key)
    if m:  # an attention layer: mapping/AttLayer_<i>/... or synthesis/<r>x<r>/<Conv>/AttLayer_l2n/...
        layer, _, leaf = m[2].partition(".")
        if key.startswith("mapping."):
            scope, unread = f"mapping/AttLayer_{m[1]}", () if use_pos else ("from_pos_map", "to_pos_map")
        else:
            res = int(m[1])
            conv_scope = "Conv0_up" if ".conv0." in key else ("Conv1" if res > 4 else "Conv")
            scope, unread = f"synthesis/{res}x{res}/{conv_scope}/AttLayer_l2n", () if use_pos else ("to_pos_map",)
        if layer in unread:
            return None, None
        if layer in _TF_ATTENTION:
            return f"{scope}/{leaf}_{_TF_ATTENTION[layer]}", dense if leaf == "weight" else same
        return f"{scope}/" + {"centroids": "toasgn_init", "att_weight": "iter_0/st_weights"}.get(layer, layer), same
    m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|conv_last|torgb|skip)\.(.+)", key)
    if not m:
        return key, same  # not a parameter TF networks have: reported as missing
    res, layer, name = int(m[1]), m[2], m[3]
    scope = f"synthesis/{res}x{res}/" + {"conv0": "Conv0_up", "conv1": "Conv1" if res > 4 else "Conv",
                                         "conv_last": "ToRGB/extraLayer", "torgb": "ToRGB", "skip": "Skip"}[layer]
    if name == "noise_const":  # TF keeps the constant noise of layer i as synthesis/noise<i>, shape (1, 1, r, r)
        index = 2 * int(math.log2(res)) - (5 if layer == "conv0" else 4)
        return f"synthesis/noise{index}", lambda a: a[0, 0]
    return {"weight": (f"{scope}/weight", flipped if layer in ("conv0", "skip") else conv),
            "affine.weight": (f"{scope}/mod_weight", dense), "affine.bias": (f"{scope}/mod_bias", lambda a: a + 1),
            "biasAct.bias": (f"{scope}/bias", same)}.get(name, (f"{scope}/{name}", same))  # noise_strength


def _from_tf_network(net, source: str) -> tuple[GANformerConfig, dict[str, torch.Tensor]]:
    """A TensorFlow GANformer generator record (`Gs`) -> our config and state dict (less the buffers the config
    computes), as the reference's `pytorch_version/loader.py` converts it: the settings from `_tf_config`, every
    parameter looked up by its TF name (`_tf_source`; a missing one named) and every TF variable accounted for.

    Where that converter is wrong, the TF code (training/network.py, training/networks.py) decides:
    - the last mapping layer is `Dense{n/2 - 1}` (loader.py reads `Dense3`, right for 8 mapping layers only);
    - `conv_last` of the last block, whatever the resolution, is `<R>x<R>/ToRGB/extraLayer` (loader.py reads it for
      256x256 only);
    - without use_pos TF creates no `to_pos` (nor, in the mapping, `from_pos`) variables; the PyTorch layers exist but
      are never called then, and are zero here (loader.py fails on their absence);
    - settings absent from the pickle take TF's defaults (loader.py's end_res default is 8, TF's 20);
    - refused (`_tf_config`), since no faithful conversion exists: labels (TF's label concatenation cannot be built,
      and loader.py's embed with a zero bias is not TF's), iterative k-means (loader.py's duplicated
      `queries2centroids` pattern matches no parameter, so TF's `key2` projection is never converted; nor is it
      implemented here),
      several k-means iterations (one TF st_weights per iteration), a plain or odd-depth mapping, mapping_dim,
      progressive-growing `ToRGB_lod` layers (never built by GANformer's TF code; loader.py's handling of them
      sets `kwargs.synthesis.kwargs`, which does not exist), and every TF option loader.py silently drops.
    - TF normalises each local z on its own, the reference's PyTorch generator the k-1 together (as here): loaded as
      the reference loads it, the two differ slightly unless the z's have equal norms.
    The unused TF variables accepted are the noise inputs TF creates for every layer index whatever the settings
    (`synthesis/noise<i>`, i < 2 log2(R) - 2: the last is read by no layer, none of them without local_noise).
    TF's truncation_cutoff counts W rows from a row 0 no layer reads: cutoff c there is c - 1 here (but for the
    last block's extra layer and ToRGB)."""
    from .checkpoints import check_config_sizes, tf_tensors, tf_variables

    config = _tf_config(net, source)
    check_config_sizes(config, source)
    variables = tf_variables(net)
    if any("ToRGB_lod" in name for name in variables):
        raise ck.CheckpointError(f"{source}: a progressive-growing network (ToRGB_lod layers), which GANformer's "
                                 f"TensorFlow code never builds; supported: {SUPPORTED}")
    try:
        with torch.device("meta"):
            expected = Generator(config).state_dict()
    except (TypeError, ValueError) as e:
        raise ck.CheckpointError(f"{source}: unsupported GANformer configuration ({e}); supported: {SUPPORTED}") \
            from None
    noise_inputs = {f"synthesis/noise{i}" for i in range(2 * int(math.log2(config.img_resolution)) - 2)}
    tensors = tf_tensors(expected, variables, lambda key: _tf_source(key, config), source,
                         "a GANformer of its settings", noise_inputs, SUPPORTED)
    return config, tensors
