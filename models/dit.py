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
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d_head)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


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
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (N, T, D) -> (N, T, p*p*C_out)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
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

    # --- pieces, so samplers can run the transformer on a subset of tokens ---------------------------------------
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
        """adaLN conditioning c (N, D) = timestep embedding + label embedding (+ style projection)."""
        if y is None:
            y = torch.full((t.shape[0],), self.config.null_class, dtype=torch.long, device=t.device)
        c = self.t_embedder(t) + self.y_embedder(y.long(), drop_labels)
        if style is not None:
            if self.config.style_dim == 0:
                raise ValueError("this DiT was not trained with style conditioning (style_dim = 0)")
            c = c + self.style_proj(style.to(c.dtype))
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


def load_dit(path, num_heads: int | None = None) -> DiT:
    """facebookresearch `.pt` (a state dict, or a train.py checkpoint: its `ema` is used) or DiffuGAN
    `.safetensors` (config in the metadata). Strict keys and shapes; never executes code."""
    import json
    from pathlib import Path

    from . import checkpoints as ck

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
    model = DiT(config)
    tensors = {k: v.float() for k, v in tensors.items()}
    ck.check_state_dict(model, tensors, source)
    model.load_state_dict(tensors, strict=True)
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


# --------------------------------------------------------------------------------------------------------------
# Region-adaptive refinement: per-token step counts, and a transformer pass over a subset of tokens
# --------------------------------------------------------------------------------------------------------------
def token_step_counts(step_map: torch.Tensor, patch_size: int, border: int = 1) -> torch.Tensor:
    """Per-pixel step counts (N, 1, H, W) at latent resolution -> per-token counts (N, T): a token gets the
    largest count of its p x p pixels, then `border` tokens of dilation so region edges get the higher count."""
    n = F.max_pool2d(step_map.float(), patch_size)  # (N, 1, gh, gw)
    if border > 0:
        n = F.max_pool2d(n, 2 * border + 1, stride=1, padding=border)
    return n.flatten(1).round().long()


def evaluation_schedule(counts: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Which of the `total_steps` steps evaluate each token: a token with n steps is evaluated at steps
    floor(j * K / n), j = 0..n-1 (evenly spaced, always including step 0). (N, T) -> (N, K, T) bool.

    Between evaluations a token's clean-latent prediction (x0) is forecast from its last two evaluations (or, with
    forecast 0, held: then with the Euler sampler it follows exactly an n-step Euler schedule, the sub-sequence of
    the K sigmas at its evaluation steps); all tokens stay at the same noise level at every step (no seams in
    noise level across region borders). See RegionAdaptiveState."""
    if counts.min() < 0 or counts.max() > total_steps:
        raise ValueError(f"step counts must be in 0..{total_steps}, got {int(counts.min())}..{int(counts.max())}")
    k = torch.arange(total_steps, device=counts.device)
    j_max = counts.clamp_min(1)[:, None, :]  # (N, 1, T)
    # step i is an evaluation step of a token with n steps iff some j < n has floor(j*K/n) == i, i.e. iff
    # ceil(i*n/K) < ceil((i+1)*n/K) (the count of evaluation points up to i grows at i)
    before = torch.div(k[None, :, None] * j_max + total_steps - 1, total_steps, rounding_mode="floor")
    after = torch.div((k[None, :, None] + 1) * j_max + total_steps - 1, total_steps, rounding_mode="floor")
    return (after > before) & (counts[:, None, :] > 0)


def block_flops(config: DiTConfig, active: int, total: int) -> int:
    """Multiply-adds x 2 of one DiT block for `active` query tokens attending over `total` tokens."""
    d, hidden = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
    linear = 2 * active * (3 * d * d + d * d + 2 * d * hidden)
    attention = 2 * 2 * active * total * d
    return linear + attention


def transformer_flops(config: DiTConfig, active: int, total: int) -> int:
    """Counted FLOPs of a transformer pass (blocks, patch embedding and final layer) on `active` of `total` tokens."""
    p2c = config.patch_size ** 2 * config.in_channels
    embed = 2 * total * p2c * config.hidden_size
    final = 2 * active * config.hidden_size * config.patch_size ** 2 * config.out_channels
    return config.depth * block_flops(config, active, total) + embed + final


class Packing:
    """Each row's active tokens packed into one sequence (P = their total count) for the per-token layers, so rows
    with different token sets share one batch without padding; only attention's queries are laid out per row,
    each row's list padded to the longest (L) by repeating its first entry.

    From a (R, T) bool mask of the tokens each row computes (row-major, tokens ascending): `row`, `token` (P,) each
    entry's row and token; `flat` (P,) its index in the flattened (R x T) tokens; `padded` (R, L) the entry at each
    slot of each row's padded list; `unpad` (P,) each entry's index in the flattened (R x L) padded lists."""

    def __init__(self, mask: torch.Tensor):
        self.row, self.token = mask.nonzero(as_tuple=True)
        self.flat = self.row * mask.shape[1] + self.token
        counts = mask.sum(1)
        start = counts.cumsum(0) - counts  # (R,) each row's first entry
        slot = torch.arange(int(counts.max()) if mask.numel() else 0, device=mask.device)
        self.padded = start[:, None] + torch.where(slot < counts[:, None], slot, torch.zeros_like(slot))
        self.unpad = self.row * len(slot) + torch.arange(len(self.token), device=mask.device) - start[self.row]
        self.tokens = mask.shape[1]

    def cache_rows(self, heads: int) -> torch.Tensor:
        """(P x heads,) each entry's rows in a contiguous (R, H, T, dh) cache seen as (R x H x T, dh)."""
        h = torch.arange(heads, device=self.row.device)
        return ((self.row[:, None] * heads + h) * self.tokens + self.token[:, None]).flatten()

    def take(self, per_token: torch.Tensor) -> torch.Tensor:
        """(R, T, D) -> the packed entries (P, 1, D)."""
        return per_token.flatten(0, 1).index_select(0, self.flat)[:, None]


def _block_subset(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, pack: Packing | None,
                  cache: list[tuple[torch.Tensor, torch.Tensor]], layer: int) -> torch.Tensor:
    """One adaLN-Zero block for the packed active tokens (all tokens if `pack` is None, which sets the layer's
    cache), reading the rows' K/V caches and writing the active tokens' keys and values into them.

    x: (R, T, D) all tokens, or (P, 1, D) packed ones (each entry its own row of one token, so the per-row adaLN
    modulation is simply indexed per entry); c: (R, D); cache[layer]: (R, H, T, d_head) keys and values."""
    n, a, d = x.shape
    heads = block.attn.num_heads
    mod = block.adaLN_modulation(c)  # (R, 6D)
    if pack is not None:
        mod = mod.index_select(0, pack.row)  # (P, 6D)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
    qkv = block.attn.qkv(modulate(block.norm1(x), shift_msa, scale_msa))  # (n, a, 3D)
    if pack is None:
        q, keys, values = qkv.reshape(n, a, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (R, H, T, dh)
        cache[layer] = (keys, values)
    else:  # the cache (R, H, T, dh) is updated in place: fresh for the active tokens, cached for the rest
        qkv = qkv[:, 0]  # (P, 3D)
        keys, values = (z if z.is_contiguous() else z.contiguous() for z in cache[layer])
        rows = pack.cache_rows(heads)
        keys.view(-1, d // heads).index_copy_(0, rows, qkv[:, d:2 * d].reshape(-1, d // heads))
        values.view(-1, d // heads).index_copy_(0, rows, qkv[:, 2 * d:].reshape(-1, d // heads))
        cache[layer] = (keys, values)
        q = qkv[:, :d].index_select(0, pack.padded.flatten())  # (R x L, D): each row's tokens, padded
        q = q.view(pack.padded.shape[0], pack.padded.shape[1], heads, d // heads).transpose(1, 2)  # (R, H, L, dh)
    attn = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).reshape(q.shape[0], q.shape[2], d)
    if pack is not None:
        attn = attn.flatten(0, 1).index_select(0, pack.unpad)[:, None]  # (P, 1, D)
    x = x + gate_msa.unsqueeze(1) * block.attn.proj(attn)
    return x + gate_mlp.unsqueeze(1) * block.mlp(modulate(block.norm2(x), shift_mlp, scale_mlp))


def forward_subset(model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, style: torch.Tensor | None,
                   active: torch.Tensor | None, cache: list, control: Control | None = None) -> torch.Tensor:
    """The DiT on some tokens only: `active` a (R, T) bool mask (each row its own tokens, at least one) or (A,)
    token indices (the same for every row), whose keys/values are written into `cache` in place; None = all tokens,
    which fills `cache`. x (R, C, H, W) -> (R, C_out, H, W); outside the active tokens the output is zero (not
    computed). With `active` None this is exactly `DiT.forward`."""
    gh, gw = model.grid(x)
    tokens = model.embed(x)  # (R, T, D); the patch embedding is cheap and keeps positions simple
    c = model.conditioning(t, y, style)
    residuals = control(tokens, c, (gh, gw)) if control is not None else None  # on all tokens: it has its own budget
    pack = None
    if active is not None:
        if active.dtype != torch.bool:
            active = torch.zeros(gh * gw, dtype=torch.bool, device=x.device).index_fill(0, active, True)
        pack = Packing(active.expand(x.shape[0], -1))
        tokens = pack.take(tokens)  # (P, 1, D)
    for layer, block in enumerate(model.blocks):
        tokens = _block_subset(block, tokens, c, pack, cache, layer)
        if residuals is not None and layer < len(residuals):
            tokens = tokens + (residuals[layer] if pack is None else pack.take(residuals[layer]))
    if pack is None:
        return model.unpatchify(model.final_layer(tokens, c), gh, gw)
    final = model.final_layer
    shift, scale = final.adaLN_modulation(c).index_select(0, pack.row).chunk(2, dim=1)
    out = final.linear(modulate(final.norm_final(tokens), shift, scale))[:, 0]  # (P, p*p*C_out)
    full = out.new_zeros(x.shape[0], gh * gw, out.shape[-1])
    full.view(-1, out.shape[-1]).index_copy_(0, pack.flat, out)
    return model.unpatchify(full, gh, gw)


def token_pixels(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Token mask (R, T) bool -> pixel mask (R, 1, gh*p, gw*p)."""
    gh, gw = grid
    m = mask.view(mask.shape[0], 1, gh, gw)
    return m.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def step_counts_from_map(level_map: torch.Tensor, latent_hw: tuple[int, int], total_steps: int,
                         min_steps: int) -> torch.Tensor:
    """Importance / work-level map (N, 1, H, W) in 0..1 at any size -> per-latent-pixel step counts
    min_steps + round(level * (total_steps - min_steps)), (N, 1, h, w) long."""
    if not 0 <= min_steps <= total_steps:
        raise ValueError(f"min_steps {min_steps} must be between 0 and the number of steps ({total_steps})")
    m = level_map.float()
    if m.shape[-2] % latent_hw[0] == 0 and m.shape[-1] % latent_hw[1] == 0:  # e.g. image -> latent (/8)
        level = F.interpolate(m, size=latent_hw, mode="area")
    else:
        level = F.interpolate(m, size=latent_hw, mode="bilinear", antialias=True, align_corners=False)
    return (min_steps + torch.round(level.clamp(0, 1) * (total_steps - min_steps))).long()


class Evaluations:
    """One sample row's last two evaluations of some per-token quantity (x0 pixels (C, H, W), or every block's keys
    and values (2 x depth, H, T, dh)), with the sigma of each token's last two evaluations (inf: not yet evaluated).

    Between its evaluations a token's value is forecast (`forecast` 1, the default): linearly in sigma from its
    last two evaluations, last + d (last - prev), d = (sigma_last - sigma) / (sigma_prev - sigma_last) clamped to
    0..1, the first-order feature forecast of TaylorSeer-style DiT caching. `forecast` 0 holds the last value."""

    def __init__(self, values: torch.Tensor, sigma: float, tokens: int):
        self.last = values.clone()  # its own copies, updated in place (never the caller's tensors, e.g. a draft)
        self.prev = self.last
        self.s_last = torch.full((tokens,), sigma, device=values.device)
        self.s_prev = torch.full((tokens,), math.inf, device=values.device)

    def weight(self, sigma: float, forecast: int) -> torch.Tensor:
        """(T,) forecast weight d of each token at `sigma` (0: hold; tokens with one evaluation hold)."""
        known = torch.isfinite(self.s_prev)
        if forecast == 0 or not bool(known.any()):
            return torch.zeros_like(self.s_last)
        gap = (self.s_prev - self.s_last).where(known, torch.ones_like(self.s_last))
        return ((self.s_last - sigma) / gap).clamp(0, 1) * known

    def at(self, d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The values forecast with per-token weights d, already shaped to broadcast against them (into `out`, or a
        new tensor): last + d (last - prev) in one pass, exactly `last` where d is 0."""
        return torch.lerp(self.prev, self.last, 1 + d, out=out)

    def record(self, values: torch.Tensor, mask: torch.Tensor, token_mask: torch.Tensor, sigma: float):
        """New evaluations where `mask` (broadcasting against the values) / `token_mask` (T,) are set."""
        if bool(token_mask.all()):
            self.prev, self.last = self.last, values.clone()
        else:
            if self.prev is self.last:
                self.prev = self.last.clone()
            torch.where(mask, self.last, self.prev, out=self.prev)
            torch.where(mask, values, self.last, out=self.last)
        self.s_prev = torch.where(token_mask, self.s_last, self.s_prev)
        self.s_last = torch.where(token_mask, torch.full_like(self.s_last, sigma), self.s_last)


def step_index(sigmas: torch.Tensor, sigma: float) -> int:
    """The step of a sampler's schedule `sigmas` (K + 1, ending at 0) that `sigma` belongs to: the last schedule
    sigma >= it, so intermediate evaluations of multi-stage samplers count to their step."""
    idx = (sigmas[:-1].float().cpu() >= sigma * (1 - 1e-5)).nonzero()
    return int(idx.max()) if len(idx) else 0


class RegionAdaptiveState:
    """Carries one region-adaptive sampling run: which tokens each step evaluates, each sample row's evaluations
    (clean-latent prediction x0 and each block's keys/values, with their sigmas), and the counted transformer
    FLOPs (actual vs dense).

    Rows are identified by `row_keys` (a cond/uncond chunk id and the image index), so the conditional and the
    unconditional pass of classifier-free guidance keep separate caches, and each image of a batch its own map.
    A token not evaluated at a step gets its x0 and, as attention context for the evaluated tokens, its keys and
    values forecast from its last two evaluations (`forecast` 1; 0 holds the last ones: then an n-step token
    follows exactly an n-step Euler schedule). Tokens with 0 steps keep x0 = the draft: the sampler returns them
    unchanged. All tokens share the sampler's noise level at every step (no noise seams at region borders).
    """

    def __init__(self, model: DiT, counts: torch.Tensor, sigmas: torch.Tensor, draft: torch.Tensor | None,
                 dense_every: int = 0, forecast: int = 1):
        if forecast not in (0, 1):
            raise ValueError(f"forecast must be 0 (hold) or 1 (linear), got {forecast}")
        self.model, self.sigmas = model, sigmas.detach().float().cpu()
        self.total_steps = len(sigmas) - 1
        self.counts = counts  # (B, T)
        self.schedule = evaluation_schedule(counts.cpu(), self.total_steps)  # (B, K, T)
        self.draft = draft
        self.dense_every = dense_every
        self.forecast = forecast
        self.x0: dict = {}  # row key -> Evaluations of [x0 (C, H, W)]
        self.kv: dict = {}  # row key -> Evaluations of [keys, values of each block (H, T, dh)]
        self.flops = 0
        self.dense_flops = 0
        self.evaluated_tokens = 0
        self.total_tokens = 0

    def __call__(self, x: torch.Tensor, xc: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor,
                 y: torch.Tensor | None, style: torch.Tensor | None, row_keys: list, images: list[int],
                 calc_denoised, control_for: Callable[[list[int]], Control | None] | None = None) -> torch.Tensor:
        """Denoised prediction (R, C, H, W) for rows x (noisy latents; xc the model input), evaluating the
        transformer only on the tokens scheduled at this step. `control_for(rows)` gives a ControlNet hook for
        those rows (or None)."""
        s = float(sigma[0])
        step = step_index(self.sigmas, s)
        model, cfg = self.model, self.model.config
        grid = model.grid(x)
        total = grid[0] * grid[1]
        image_rows = torch.tensor(images) % self.schedule.shape[0]
        update = self.schedule[image_rows, step].to(x.device)  # (R, T): the tokens each row evaluates now
        # Rows evaluating every token run as one batch (all rows at the first step, so a uniform map batches exactly
        # like the stock path); rows evaluating a subset as one other batch, each row with its own tokens (packed,
        # see Packing); rows with no token due at this step not at all.
        dense_step = self.dense_every > 0 and step % self.dense_every == 0
        dense, subset = [], []
        for r, k in enumerate(row_keys):
            if k not in self.kv or dense_step or bool(update[r].all()):
                dense.append(r)
            elif bool(update[r].any()):
                subset.append(r)
            if k not in self.x0:  # before its first evaluation a row's x0 is the draft
                draft = self.draft[images[r] % self.draft.shape[0]].to(x) if self.draft is not None else x[r] * 0
                self.x0[k] = Evaluations(draft, math.inf, total)
        # x0 of the tokens not evaluated now: forecast (or held)
        x0 = torch.stack([ev.at(token_pixels(ev.weight(s, self.forecast)[None], grid, cfg.patch_size)[0])
                          for ev in (self.x0[k] for k in row_keys)])  # (R, C, H, W)
        for rows in (dense, subset):
            if not rows:
                continue
            sel, keys, upd = torch.tensor(rows, device=x.device), [row_keys[r] for r in rows], update[rows]
            if rows is dense:
                mask, cache, active = None, [None] * cfg.depth, [total] * len(rows)
            else:
                mask, active = upd, upd.sum(1).tolist()
                shape = self.kv[keys[0]].last.shape
                kv = x.new_empty((shape[0], len(keys)) + shape[1:])  # (2 x depth, R, H, T, dh)
                for i, k in enumerate(keys):
                    self._context(k, s, out=kv[:, i])  # the subset pass updates it in place
                cache = [(kv[2 * layer], kv[2 * layer + 1]) for layer in range(cfg.depth)]
            eps = forward_subset(model, xc[sel], t[sel], None if y is None else y[sel],
                                 None if style is None else style[sel], mask, cache,
                                 None if control_for is None else control_for(rows))[:, : x.shape[1]]
            fresh = calc_denoised(eps.float(), x[sel], sigma[sel]).to(x0.dtype)
            upd_px = token_pixels(upd, grid, cfg.patch_size)  # (R, 1, H, W)
            x0[sel] = torch.where(upd_px, fresh, x0[sel])
            if mask is None:
                kv = torch.stack([kv for layer in cache for kv in layer])  # (2 x depth, R, H, T, dh)
            computed = torch.ones_like(upd) if mask is None else upd
            for i, k in enumerate(keys):
                if k not in self.kv:
                    self.kv[k] = Evaluations(kv[:, i], s, total)
                else:
                    self.kv[k].record(kv[:, i], computed[i].view(1, 1, -1, 1), computed[i], s)
                self.x0[k].record(fresh[i], upd_px[i], upd[i], s)
            self.flops += sum(transformer_flops(cfg, a, total) for a in active)
            self.evaluated_tokens += sum(active)
        self.dense_flops += len(row_keys) * transformer_flops(cfg, total, total)
        self.total_tokens += len(row_keys) * total
        return x0

    def _context(self, key, sigma: float, out: torch.Tensor) -> torch.Tensor:
        """A row's keys and values of every block at `sigma` (2 x depth, H, T, dh: k0, v0, k1, v1, ...): the
        evaluated ones are overwritten by the subset pass, the others serve as context (forecast or held)."""
        ev = self.kv[key]
        return ev.at(ev.weight(sigma, self.forecast).view(1, 1, -1, 1), out)

    def untouched_pixels(self, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) bool: latent pixels of tokens with 0 steps (their output must equal the draft)."""
        return token_pixels(self.counts == 0, grid, self.model.config.patch_size)


# --------------------------------------------------------------------------------------------------------------
# Reference img2img sampler (no ComfyUI)
# --------------------------------------------------------------------------------------------------------------
def img2img_schedule(steps: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas and matching discrete timesteps of DiT's linear-β schedule: `steps` evenly spaced timesteps from
    strength * 999 down, then sigma 0 (a plain 'normal'-style img2img schedule)."""
    acp = torch.cumprod(1 - linear_betas(), 0)
    ts = torch.linspace(strength * (NUM_TIMESTEPS - 1), 0, steps + 1)[:-1]
    sig = ((1 - acp) / acp).sqrt()
    sigmas = torch.cat([torch.stack([_interp(sig, t) for t in ts]), torch.zeros(1)]).float()
    return sigmas, ts.float()


def _interp(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    lo, hi = int(t.floor()), int(t.ceil())
    w = float(t - lo)
    return ((1 - w) * values[lo].log() + w * values[hi].log()).exp()


def euler_img2img(model: DiT, draft, labels, sigmas, ts, cfg, noise, counts=None, dense_every: int = 0,
                  style=None, forecast: int = 1):
    """Reference Euler img2img without ComfyUI (benchmarks, training scripts): from `draft` (SD1-scaled latents)
    noised to sigmas[0] with `noise`, classifier-free guidance `cfg` against the null class (rows: cond batch, then
    uncond batch), the same update as ComfyUI's Euler on this model. With per-token step `counts` (N, T) the
    region-adaptive state evaluates each token only at its steps (`dense_every` as the sampler node's; `forecast`
    as RegionAdaptiveState's). A `style` (N, style_dim) conditions the cond rows only, as DiffuGAN DiT Conditioning
    does (dense sampling only). Returns (latent, state or None)."""
    n = draft.shape[0]
    if style is not None and counts is not None:
        raise ValueError("euler_img2img: style with per-token counts is not supported")
    state = RegionAdaptiveState(model, counts, sigmas, draft, dense_every, forecast) if counts is not None else None
    x = draft + noise * sigmas[0]
    y = torch.cat([labels, torch.full_like(labels, model.config.null_class)]) if cfg != 1 else labels
    keys = [(c, j) for c in range(2 if cfg != 1 else 1) for j in range(n)]
    images = [j for _, j in keys]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        xx = torch.cat([x, x]) if cfg != 1 else x
        sig = s.expand(xx.shape[0])
        xc = xx / (s ** 2 + 1).sqrt()
        t = ts[i].expand(xx.shape[0])
        if state is None and style is not None:
            eps = model(xc[:n], t[:n], y[:n], style)
            if cfg != 1:
                eps = torch.cat([eps, model(xc[n:], t[n:], y[n:])])
            den = xx - eps[:, : x.shape[1]] * s
        elif state is None:
            eps = model(xc, t, y)[:, : x.shape[1]]
            den = xx - eps * s
        else:
            den = state(xx, xc, sig, t, y, None, keys, images, lambda e, a, b: a - e * b.view(-1, 1, 1, 1))
        if cfg != 1:
            cond, uncond = den.chunk(2)
            den = uncond + cfg * (cond - uncond)
        x = x + (x - den) / s * (sigmas[i + 1] - s)
    if state is not None:  # 0-step tokens: exactly the draft (as the ComfyUI sampler returns them)
        x = torch.where(state.untouched_pixels(model.grid(x)), draft, x)
    return x, state
