"""DiT refiner: a diffusion transformer with adaLN-Zero blocks (Peebles & Xie, "Scalable Diffusion Models with
Transformers"), pure PyTorch.

Parameter names follow facebookresearch/DiT, so `DiT-XL-2-256x256.pt` / `-512x512.pt` and `train.py` checkpoints
load strictly. Additions, all optional and absent from their files:
- resolution-agnostic position embedding: the fixed 2-D sin-cos table is recomputed for any latent grid
  (identical to the stored `pos_embed` at the trained size, which is still loaded and checked);
- style conditioning: `style_proj` maps a style vector (a CLIP embedding) into the adaLN conditioning, zero-init,
  for models trained with it (config.style_dim > 0).

Latents are SD-VAE latents (4 channels, scaled by 0.18215), noise schedule linear β 1e-4…0.02 over 1000 steps.
Shapes: x (N, C, H, W) latents; t (N,) timesteps in [0, 1000); y (N,) class labels (num_classes = the null class);
tokens (N, T, D) with T = (H/p)(W/p).

This file is the network, its configs and its checkpoint I/O. Region-adaptive refinement (per-token step counts,
a pass over a subset of tokens, forecasts between evaluations) is models/region.py; FLOP counts models/flops.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import checkpoints as ck
from torch import nn

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


# A ControlNet hook: (embedded tokens (N, T, D), adaLN conditioning (N, D), token grid) -> residuals for the
# outputs of the first blocks, or None.
Control = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], "list[torch.Tensor] | None"]


@dataclass(frozen=True)
class DiTConfig:
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1  # > 0 means the label table has a null (CFG) row
    input_size: int = 32  # latent size the stored pos_embed was made for (256 px / 8)
    style_dim: int = 0  # > 0: style vector conditioning through `style_proj`

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def null_class(self) -> int:
        return self.num_classes


# Standard sizes (facebookresearch/DiT models.py): name -> (depth, hidden_size, num_heads)
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def standard_config(name: str, image_size: int = 256, **overrides) -> DiTConfig:
    """'DiT-XL/2' (or 'XL/2', 'DiT-XL-2') at an image size (256 or 512 for the released models)."""
    m = re.fullmatch(r"(?:DiT-)?(S|B|L|XL)[/-]([248])", name.strip(), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"unknown DiT model {name!r}; expected DiT-S|B|L|XL/2|4|8, e.g. 'DiT-XL/2'")
    depth, hidden, heads = DIT_SIZES[m.group(1).upper()]
    return DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(m.group(2)),
                     input_size=image_size // 8, **overrides)


# --------------------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------------------
def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (T, dim), rows in raster order. The first half of the channels encodes
    the column, the second half the row (facebookresearch's convention), each as [sin(pos*ω), cos(pos*ω)]."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos position embedding")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)

    def axis(pos: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, dim/2)
        out = pos.double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([axis(cols.flatten()), axis(rows.flatten())], dim=1).float()  # (T, dim)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class PatchEmbed(nn.Module):
    """p x p patches -> tokens via a strided conv. x (N, C, H, W) -> (N, T, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D)
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector; row `num_classes` is the null label used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + (dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:  # training: label dropout for CFG
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# --------------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention (qkv and proj with bias), through scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, T, 3D) -> queries, keys, values, each (N, heads, T, d_head)."""
        n, t, d3 = qkv.shape
        return qkv.reshape(n, t, 3, self.num_heads, d3 // (3 * self.num_heads)).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(N, heads, Tq, dh) queries over (N, heads, T, dh) keys/values -> (N, Tq, D), before `proj`."""
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(*self.split(self.qkv(x))))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: the conditioning regresses shift/scale/gate for attention and MLP; gates start at 0."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (N, T, D), (N, D)
        return self.modulated(x, self.adaLN_modulation(c))

    def modulated(self, x: torch.Tensor, mod: torch.Tensor,
                  attention: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The block on tokens x (N, T, D) with its adaLN modulation `mod` (N, 6D) already regressed, one row per
        row of x. `attention` replaces the attention core: qkv (N, T, 3D) -> (N, T, D) before `proj` (the
        region-adaptive pass attends over cached keys/values with it); default: self-attention over x."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        a = self.attn(h) if attention is None else self.attn.proj(attention(self.attn.qkv(h)))
        x = x + gate_msa.unsqueeze(1) * a
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (N, T, D) -> (N, T, p*p*C_out)
        return self.modulated(x, self.adaLN_modulation(c))

    def modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """With the modulation (N, 2D) already regressed, one row per row of x."""
        shift, scale = mod.chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.style_clip = ""  # identity of the CLIP whose embeddings a style-conditioned model was trained on
        c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        if c.style_dim > 0:
            self.style_proj = nn.Linear(c.style_dim, c.hidden_size)
        # fixed (not trained) and stored in checkpoints as a parameter named pos_embed
        grid = c.input_size // c.patch_size
        self.pos_embed = nn.Parameter(sincos_pos_embed(c.hidden_size, grid, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier for linears, zero for every adaLN modulation and the output layer (adaLN-Zero): a fresh
        DiT is the identity on its residual stream and predicts zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                       self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.config.style_dim > 0:
            nn.init.zeros_(self.style_proj.weight)
            nn.init.zeros_(self.style_proj.bias)

    # --- pieces (the region-adaptive pass in models/region.py runs them on a subset of tokens) -----------------
    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        p = self.config.patch_size
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by the DiT patch size {p}; use an image size "
                             f"that is a multiple of {8 * p} pixels")
        return h // p, w // p

    def position_table(self, gh: int, gw: int, device, dtype) -> torch.Tensor:
        """(1, T, D): the stored table at the trained grid, the same formula recomputed at any other grid."""
        trained = self.config.input_size // self.config.patch_size
        if (gh, gw) == (trained, trained):
            return self.pos_embed.to(device=device, dtype=dtype)
        return sincos_pos_embed(self.config.hidden_size, gh, gw)[None].to(device=device, dtype=dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, H, W) -> tokens with position (N, T, D)."""
        gh, gw = self.grid(x)
        tokens = self.x_embedder(x)
        return tokens + self.position_table(gh, gw, tokens.device, tokens.dtype)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor | None = None, style: torch.Tensor | None = None,
                     drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        """adaLN conditioning c (N, D) = timestep embedding + label embedding (+ style projection). A style row of
        zeros means "no style" for that row (a CLIP embedding is a unit vector, never zero), so one batch can mix
        prompted and unprompted rows."""
        if y is None:
            y = torch.full((t.shape[0],), self.config.null_class, dtype=torch.long, device=t.device)
        c = self.t_embedder(t) + self.y_embedder(y.long(), drop_labels)
        if style is not None:
            if self.config.style_dim == 0:
                raise ValueError("this DiT was not trained with style conditioning (style_dim = 0)")
            style = style.to(c.dtype)
            c = c + self.style_proj(style) * style.ne(0).any(dim=1, keepdim=True).to(c.dtype)
        return c

    def unpatchify(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, gh*p, gw*p)."""
        p, c = self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                style: torch.Tensor | None = None, control: Control | None = None) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_channels, H, W): predicted noise (first C channels) and, with learn_sigma,
        the variance interpolation (last C). `control(tokens, c, grid)` may return residuals for the first blocks
        (a ControlNet)."""
        gh, gw = self.grid(x)
        tokens = self.embed(x)  # (N, T, D)
        c = self.conditioning(t, y, style)  # (N, D)
        residuals = control(tokens, c, (gh, gw)) if control is not None else None
        for layer, block in enumerate(self.blocks):
            tokens = block(tokens, c)
            if residuals is not None and layer < len(residuals):
                tokens = tokens + residuals[layer]
        return self.unpatchify(self.final_layer(tokens, c), gh, gw)


# --------------------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------------------
def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """DiT's training schedule: β linear from 1e-4 to 0.02 (float64)."""
    return torch.linspace(BETA_START, BETA_END, num_timesteps, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
SAFETENSORS_FORMAT = "diffugan.dit.v1"


def infer_config(tensors: dict[str, torch.Tensor], source: str, name_hint: str | None = None,
                 num_heads: int | None = None) -> DiTConfig:
    """Read everything but the head count off the weights; take heads from `num_heads`, else from the model
    name in the file name ('DiT-XL-2-256x256.pt'), else from the standard size with that hidden width."""
    from .checkpoints import CheckpointError

    try:
        proj = tensors["x_embedder.proj.weight"]  # (D, C, p, p)
        table = tensors["y_embedder.embedding_table.weight"]  # (classes [+1], D)
        final = tensors["final_layer.linear.weight"]  # (p*p*C_out, D)
        pos = tensors["pos_embed"]  # (1, T, D)
    except KeyError as e:
        raise CheckpointError(f"{source}: not a DiT checkpoint (no {e.args[0]}); expected facebookresearch/DiT "
                              "parameter names") from None
    hidden, in_ch, p = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max((int(k.split(".")[1]) for k in tensors if k.startswith("blocks.")), default=-1)
    out_ch = final.shape[0] // (p * p)
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"{source}: final layer gives {out_ch} channels for {in_ch} input channels")
    grid = int(round(math.sqrt(pos.shape[1])))
    style_dim = tensors["style_proj.weight"].shape[1] if "style_proj.weight" in tensors else 0
    mlp_ratio = tensors["blocks.0.mlp.fc1.weight"].shape[0] / hidden if depth else 4.0
    # A null row exists iff trained with label dropout; DiT's released models have 1000 classes + 1 null row.
    rows = table.shape[0]
    num_classes, dropout = (rows - 1, 0.1) if rows > 1 else (rows, 0.0)
    if num_heads is None and name_hint:
        m = re.search(r"DiT-(S|B|L|XL)-([248])", name_hint, flags=re.IGNORECASE)
        if m:
            d, h, heads = DIT_SIZES[m.group(1).upper()]
            if (d, h) == (depth, hidden):
                num_heads = heads
    if num_heads is None:
        sizes = {(d, h): heads for d, h, heads in DIT_SIZES.values()}
        num_heads = sizes.get((depth, hidden)) or next((hd for (_, h), hd in sizes.items() if h == hidden), None)
    if num_heads is None:
        raise CheckpointError(
            f"{source}: hidden size {hidden} is not a standard DiT size, so the number of attention heads cannot be "
            "known (a wrong guess loads fine and gives wrong images): choose it in the loader")
    return DiTConfig(depth=depth, hidden_size=hidden, num_heads=num_heads, patch_size=p, in_channels=in_ch,
                     num_classes=num_classes, learn_sigma=out_ch == 2 * in_ch, mlp_ratio=mlp_ratio,
                     class_dropout_prob=dropout, input_size=grid * p, style_dim=style_dim)


@ck.user_file_loader("DiT", (".pt", ".pth", ".bin", ".ckpt", ".safetensors"))
def load_dit(path, num_heads: int | None = None) -> DiT:
    """facebookresearch `.pt` (a state dict, or a train.py checkpoint: its `ema` is used) or DiffuGAN
    `.safetensors` (config in the metadata). Strict keys and shapes; never executes code."""
    import json
    from pathlib import Path

    path = Path(path)
    source, suffix = path.name, path.suffix.lower()
    config = None
    if suffix == ".safetensors":
        tensors, meta = ck.load_safetensors(path)
        if meta.get("format") == SAFETENSORS_FORMAT and "config" in meta:
            config = DiTConfig(**json.loads(meta["config"]))
    elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
        obj = ck.load_torch_weights(path)
        if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
            obj = obj["ema"]  # train.py checkpoint: {model, ema, opt, args}
        elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ck.CheckpointError(f"{source}: expected a DiT state dict (or a train.py checkpoint with 'ema')")
        tensors = obj
    else:
        raise ck.CheckpointError(f"{source}: unsupported file type '{suffix}'; use a facebookresearch DiT .pt or "
                                 "a .safetensors")
    if config is None or num_heads is not None:
        config = infer_config(tensors, source, name_hint=source, num_heads=num_heads)
    tensors = {k: v.float() for k, v in tensors.items()}
    model = ck.build_checked(lambda: DiT(config), tensors, source, config)
    if suffix == ".safetensors":
        model.style_clip = meta.get("style_clip", "")
    return model.eval().requires_grad_(False)


def save_dit_safetensors(model: DiT, path, half: bool = False) -> None:
    """`half`: store fp16 (the loader computes in fp32 either way); the fixed position table stays fp32. A model
    trained with style conditioning records the identity of its CLIP (`model.style_clip`), so a style from another
    CLIP can be refused."""
    from .checkpoints import save_safetensors

    sd = {k: v.half() if half and k != "pos_embed" else v for k, v in model.state_dict().items()}
    meta = {"format": SAFETENSORS_FORMAT, "config": asdict(model.config)}
    if model.style_clip:
        meta["style_clip"] = model.style_clip
    save_safetensors(path, sd, meta)
