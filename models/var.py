"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., arXiv 2404.02905), pure PyTorch.

Two networks, as FoundationVision/VAR releases them (`vae_ch160v4096z32.pth` and `var_d16.pth` … `var_d30.pth`):

- **VQVAE**, the multi-scale residual tokenizer. The encoder (the latent-diffusion VQ-f16 layout) gives features f
  (B, Cvae, h, w); for each scale k with side pn_k (`patch_nums`, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16), the residual
  f − f̂ is area-downsampled to pn_k × pn_k and quantised to its nearest codebook entries (one shared codebook of V
  entries); their embedding, bicubic-upsampled back to h × w and passed through φ (a 3×3 convolution mixed with its
  input, `quant_resi` of it; four φ shared across the scales, each scale using the one whose position is nearest
  its own), is added to f̂. The decoder turns f̂ into the image. The tokens of an image are the index maps of all
  scales; the image "so far" after scale k decodes f̂ after k — a full-size image of the coarse scales.
- **VAR**, the transformer that predicts the index map of the next scale from all coarser ones (a block-causal
  mask: every token sees every token of its own and coarser scales). The first scale's input is the class
  embedding (+ `pos_start`); each later scale's input is f̂ so far area-downsampled to its side, through
  `word_embed`. Position (`pos_1LC`) and scale (`lvl_embed`) embeddings are added. Blocks are adaLN: the class
  embedding gives per-block shift, scale and gate for attention and MLP (`ada_lin`); attention uses L2-normalised
  queries and keys with a learned per-head temperature (`attn_l2_norm`). Logits through an adaLN head.
  Sampling: scale by scale with a KV cache; classifier-free guidance against the null class, ramped linearly from 0
  at the first scale to `cfg` at the last: logits = (1 + t) cond − t uncond, t = cfg · k / (K − 1); top-k / top-p
  filtering; one draw per token from a `torch.Generator`.

Optional (absent from FoundationVision's files): `style_proj`, a map of a style vector (a DIFFUGAN_STYLE embedding)
into the conditioning (zero-initialised), for zoo models trained with style conditioning (config.style_dim > 0). The
style (a unit vector) enters it scaled by sqrt(style_dim), i.e. at about unit variance per dimension: unscaled, its
entries (std 0.06 for the zoo CLIP's 256) move the projection's output ~16x less per update than the rest of the
network's inputs do (the zoo DiT and UNet, trained unscaled, kept a caption effect near 1 % of their loss; the zoo
VAR, trained scaled, 2 % after 1,500 steps).

Parameter and buffer names are FoundationVision's, so their files load strictly (`load_vqvae`, `load_var`): depth,
widths, vocabulary, scales and heads are read off the weights (heads from the per-head temperature; without it, from
the file name `var_d<depth>` — the released models have depth heads — or the caller). The φ mixing ratio (0.5) is
not stored: it is the released models' setting.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ck

STANDARD_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
MAX_TOKENS = 1 << 14  # VAR-d36 at 512 px has 2,240
SAFETENSORS_FORMAT = "diffugan.var.v1"
VQVAE_SAFETENSORS_FORMAT = "diffugan.var_vqvae.v1"


# ----------------------------------------------------------------------------------------------------------------
# The multi-scale residual tokenizer
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True  # self-attention at the lowest resolution
    using_mid_sa: bool = True
    quant_resi: float = 0.5  # φ(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # 1: one φ for all scales; n > 1: n φ, each scale using the nearest by position
    scales: int = len(STANDARD_PATCH_NUMS)  # how many scales the codebook statistics are kept for
    in_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not 1 <= self.scales <= 64 or not 1 <= self.share_quant_resi <= 64:
            raise ValueError(f"scales {self.scales} and share_quant_resi {self.share_quant_resi} must be 1…64")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=-1)  # (b, hw query, hw key)
        return x + self.proj_out((v @ attn.transpose(1, 2)).view(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level(blocks: list, attn: list, resample: nn.Module | None = None, name: str = "") -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attn)
    if resample is not None:
        setattr(level, name, resample)
    return level


def _mid(channels: int, attention: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels) if attention else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cur, last = c.ch, len(c.ch_mult) - 1
        for i, m in enumerate(c.ch_mult):
            blocks, attn = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(cur, c.ch * m))
                cur = c.ch * m
                if i == last and c.using_sa:
                    attn.append(AttnBlock(cur))
            self.down.append(_level(blocks, attn, Downsample(cur) if i != last else None, "downsample"))
        self.mid = _mid(cur, c.using_mid_sa)
        self.norm_out, self.conv_out = _norm(cur), nn.Conv2d(cur, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        last = len(c.ch_mult) - 1
        cur = c.ch * c.ch_mult[last]
        self.conv_in = nn.Conv2d(c.z_channels, cur, 3, padding=1)
        self.mid = _mid(cur, c.using_mid_sa)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            blocks, attn = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(cur, c.ch * c.ch_mult[i]))
                cur = c.ch * c.ch_mult[i]
                if i == last and c.using_sa:
                    attn.append(AttnBlock(cur))
            levels.insert(0, _level(blocks, attn, Upsample(cur) if i != 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)  # up[i] works at level i (0: full resolution); run from the last down
        self.norm_out, self.conv_out = _norm(cur), nn.Conv2d(cur, c.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """φ: a residual 3×3 convolution applied to each scale's upsampled embedding."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiChoice(nn.Module):
    """The φ of scale k of K: among n φ placed at evenly spaced positions in 0..1, the one nearest k / (K - 1)."""

    def __init__(self, channels: int, ratio: float, share: int, scales: int):
        super().__init__()
        if share < 1:
            raise ValueError("share_quant_resi must be at least 1 (FoundationVision's released tokenizer uses 4)")
        n = share
        phis = [Phi(channels, ratio) if abs(ratio) > 1e-6 else nn.Identity() for _ in range(n)]
        if share == 1:
            self.qresi = phis[0]
        else:
            self.qresi_ls = nn.ModuleList(phis)
        margin = 1 / 3 / n if n == 4 else 1 / 2 / n
        self.ticks = torch.linspace(margin, 1 - margin, n, dtype=torch.float64) if n > 1 else torch.zeros(1)

    def forward(self, h: torch.Tensor, k: int, scales: int) -> torch.Tensor:
        if hasattr(self, "qresi"):
            return self.qresi(h)
        at = k / (scales - 1) if scales > 1 else 0.0
        return self.qresi_ls[int((self.ticks - at).abs().argmin())](h)


class MultiScaleQuantizer(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(c.vocab_size, c.z_channels)
        self.quant_resi = PhiChoice(c.z_channels, c.quant_resi, c.share_quant_resi, c.scales)
        # codebook use per scale, a training statistic kept in the released files (unused here)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(c.scales, c.vocab_size))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C) features -> (N,) indices of the nearest codebook entries (squared Euclidean distance)."""
        e = self.embedding.weight
        d = (z.square().sum(1, keepdim=True) + e.square().sum(1)).addmm(z, e.T, alpha=-2)
        return d.argmin(1)

    def upsampled(self, idx: torch.Tensor, side: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """(B, side h·w) indices -> their embeddings as a (B, C, *size) map (bicubic unless already that size)."""
        h = self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], -1, *side)
        return F.interpolate(h, size=size, mode="bicubic") if tuple(side) != tuple(size) else h


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig = VQVAEConfig()):
        super().__init__()
        self.config = c = config
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        self.quantize = MultiScaleQuantizer(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 3, padding=1)

    def phi(self, h: torch.Tensor, k: int, scales: int) -> torch.Tensor:
        return self.quantize.quant_resi(h, k, scales)

    def encode(self, images: torch.Tensor, patch_nums=STANDARD_PATCH_NUMS) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in -1..1 -> the index map of every scale, [(B, pn_k²)]; the last scale's side must be
        the feature map's (H / 16 for the released tokenizer)."""
        f = self.quant_conv(self.encoder(images)).float()
        b, c, h, w = f.shape
        sides = [(p, p) if isinstance(p, int) else tuple(p) for p in patch_nums]
        if sides[-1] != (h, w):
            raise ValueError(f"the last scale ({sides[-1][0]}×{sides[-1][1]}) must be the feature map's size "
                             f"({h}×{w}): the image must be {sides[-1][0] * self.config.downsample} px")
        rest, out = f.clone(), []
        for k, side in enumerate(sides):
            z = rest if k == len(sides) - 1 else F.interpolate(rest, size=side, mode="area")
            idx = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, -1)
            rest = rest - self.phi(self.quantize.upsampled(idx, side, (h, w)), k, len(sides))
            out.append(idx)
        return out

    def forward_train(self, images: torch.Tensor, patch_nums=STANDARD_PATCH_NUMS, beta: float = 0.25
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training (the paper's tokenizer objective without its perceptual and adversarial terms): images -> their
        reconstruction, the quantisation loss and the index maps. The features are quantised scale by scale as in
        `encode`; the codebook and φ are pulled toward the features (mean over scales of ||f̂ − sg(f)||²), the encoder
        is committed to them (β ||sg(f̂) − f||²), and the decoder sees f̂ with the straight-through gradient to f."""
        f = self.quant_conv(self.encoder(images)).float()
        b, c, h, w = f.shape
        sides = [(p, p) if isinstance(p, int) else tuple(p) for p in patch_nums]
        target = f.detach()
        rest, f_hat, loss, out = target.clone(), torch.zeros_like(target), f.new_zeros(()), []
        for k, side in enumerate(sides):
            z = rest if k == len(sides) - 1 else F.interpolate(rest, size=side, mode="area")
            with torch.no_grad():
                idx = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, -1)
            part = self.phi(self.quantize.upsampled(idx, side, (h, w)), k, len(sides))
            f_hat = f_hat + part
            rest = rest - part.detach()
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, target)
            out.append(idx)
        straight = f + (f_hat - f).detach()
        return self.decoder(self.post_quant_conv(straight)), loss / len(sides), out

    def f_hat(self, indices: list[torch.Tensor], side: int | None = None, scales: int | None = None) -> torch.Tensor:
        """Index maps of the first scales -> f̂ (B, Cvae, side, side), the sum of their φ(upsampled embeddings).
        `side`: the last scale's (default: the last given map's); `scales`: how many scales the tokenizer runs
        (default: as many as given), which decides each scale's φ."""
        sides = [math.isqrt(i.shape[1]) for i in indices]
        side, scales = side or sides[-1], scales or len(indices)
        return sum(self.phi(self.quantize.upsampled(i, (s, s), (side, side)), k, scales)
                   for k, (i, s) in enumerate(zip(indices, sides)))

    def decode_f_hat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f̂ (B, Cvae, h, w) -> images (B, 3, 16h, 16w) in -1..1."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def decode(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """All scales' index maps -> images in -1..1."""
        return self.decode_f_hat(self.f_hat(indices))


# ----------------------------------------------------------------------------------------------------------------
# The next-scale transformer
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VARConfig:
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    vocab_size: int = 4096
    z_channels: int = 32
    patch_nums: tuple = STANDARD_PATCH_NUMS
    attn_l2_norm: bool = True
    shared_aln: bool = False
    norm_eps: float = 1e-6
    style_dim: int = 0  # > 0: a style vector conditions it through `style_proj` (zoo models)

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if not self.patch_nums or min(self.patch_nums) < 1 or self.tokens > MAX_TOKENS:
            raise ValueError(f"patch_nums {self.patch_nums}: between 1 and {MAX_TOKENS} tokens in all (a mask of "
                             "tokens² entries is built)")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)


_MAX_LOG_TEMPERATURE = float(torch.tensor(100.0).log())  # the per-head temperature is at most 100


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, l2_norm: bool):
        super().__init__()
        self.heads, self.head_dim, self.l2_norm = heads, dim // heads, l2_norm
        if l2_norm:  # queries and keys on the unit sphere, a learned temperature per head (at most 100)
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: list | None = None) -> torch.Tensor:
        """`cache`: a [k, v] pair this call appends its keys and values to (sampling: each scale sees the
        coarser ones through it) — or None (training: the whole sequence with `mask`)."""
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        q, k, v = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(_MAX_LOG_TEMPERATURE).exp()
            k, scale = F.normalize(k, dim=-1), 1.0
        else:
            scale = 0.25 / math.sqrt(self.head_dim)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    def __init__(self, c: VARConfig):
        super().__init__()
        self.dim = c.embed_dim
        self.attn = SelfAttention(c.embed_dim, c.num_heads, c.attn_l2_norm)
        self.ffn = FFN(c.embed_dim, round(c.embed_dim * c.mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(c.embed_dim, eps=c.norm_eps, elementwise_affine=False)
        if c.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c.embed_dim) / c.embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c.embed_dim, 6 * c.embed_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask=None, cache=None) -> torch.Tensor:
        """`cond`: (B, D) the conditioning, or (B, 1, 6, D) the shared modulation (shared_aln)."""
        mod = (self.ada_gss + cond) if hasattr(self, "ada_gss") else self.ada_lin(cond).view(-1, 1, 6, self.dim)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        x = x + self.attn(self.ln_wo_grad(x) * (1 + scale1) + shift1, mask, cache) * gamma1
        return x + self.ffn(self.ln_wo_grad(x) * (1 + scale2) + shift2) * gamma2


class AdaLNHead(nn.Module):
    def __init__(self, c: VARConfig):
        super().__init__()
        self.dim = c.embed_dim
        self.ln_wo_grad = nn.LayerNorm(c.embed_dim, eps=c.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c.embed_dim, 2 * c.embed_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x) * (1 + scale) + shift


class SharedAdaLin(nn.Linear):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


def scale_tables(patch_nums) -> tuple[torch.Tensor, torch.Tensor]:
    """(lvl_1L (1, L): the scale of every token; attn_bias_for_masking (1, 1, L, L): 0 where a token may attend —
    to every token of its own and coarser scales — and -inf elsewhere)."""
    scale_of = torch.cat([torch.full((p * p,), k) for k, p in enumerate(patch_nums)])
    mask = torch.where(scale_of[:, None] >= scale_of[None, :], 0.0, -torch.inf)
    return scale_of[None].contiguous(), mask[None, None].contiguous()


# A progress hook for sampling: called after each scale with (scales done, scales in all); may raise to stop.
Progress = Callable[[int, int], None]


class VAR(nn.Module):
    def __init__(self, config: VARConfig = VARConfig()):
        super().__init__()
        self.config = c = config
        self.style_clip = ""  # identity of the CLIP whose embeddings a style-conditioned VAR was trained on
        d, pns = c.embed_dim, c.patch_nums
        self.word_embed = nn.Linear(c.z_channels, d)
        self.class_emb = nn.Embedding(c.num_classes + 1, d)  # + the null class (guidance)
        self.pos_start = nn.Parameter(torch.zeros(1, pns[0] ** 2, d))
        self.pos_1LC = nn.Parameter(torch.zeros(1, c.tokens, d))
        self.lvl_embed = nn.Embedding(len(pns), d)
        if c.style_dim:
            self.style_proj = nn.Linear(c.style_dim, d)
            nn.init.zeros_(self.style_proj.weight)
            nn.init.zeros_(self.style_proj.bias)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(d, 6 * d)) if c.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList([AdaLNBlock(c) for _ in range(c.depth)])
        lvl, mask = scale_tables(pns)
        self.register_buffer("lvl_1L", lvl)
        self.register_buffer("attn_bias_for_masking", mask)
        self.head_nm = AdaLNHead(c)
        self.head = nn.Linear(d, c.vocab_size)
        self.ranges = []
        start = 0
        for p in pns:
            self.ranges.append((start, start + p * p))
            start += p * p

    def conditioning(self, labels: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Class labels (B,) (num_classes: the null class) [+ style vectors (B, style_dim)] -> (B, D)."""
        cond = self.class_emb(labels)
        if style is not None and not self.config.style_dim:
            raise ValueError("this VAR was trained without style conditioning: give it a class label instead")
        if self.config.style_dim:  # no style = a zero style, as in training (the projection's bias stays)
            if style is None:
                style = cond.new_zeros(labels.shape[0], self.config.style_dim)
            elif style.shape != (labels.shape[0], self.config.style_dim):
                raise ValueError(f"the style must be ({labels.shape[0]}, {self.config.style_dim}); got "
                                 f"{tuple(style.shape)}: encode it with the CLIP this VAR was trained with")
            cond = cond + self.style_proj(style.to(cond.dtype) * self.config.style_dim ** 0.5)
        return cond

    def _logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x.float(), cond)).float()

    def forward(self, labels: torch.Tensor, inputs: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: labels (B,) and the next-scale inputs of every scale but the first (B, L − first, Cvae)
        (`next_scale_inputs`) -> logits (B, L, V) of every scale's tokens."""
        b = labels.shape[0]
        cond = self.conditioning(labels, style)
        first = self.config.patch_nums[0] ** 2
        x = torch.cat([cond[:, None].expand(b, first, -1) + self.pos_start.expand(b, -1, -1),
                       self.word_embed(inputs.float())], dim=1)
        x = x + self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC
        mod = self.shared_ada_lin(cond)
        for block in self.blocks:
            x = block(x, mod, self.attn_bias_for_masking)
        return self._logits(x, cond)

    def next_scale_inputs(self, vqvae: VQVAE, indices: list[torch.Tensor]) -> torch.Tensor:
        """The transformer's teacher-forcing inputs from an image's index maps: for each scale after the first, f̂ of
        the coarser scales area-downsampled to its side. -> (B, L − first, Cvae)."""
        pns, n = self.config.patch_nums, len(self.config.patch_nums)
        f_hat = torch.zeros(indices[0].shape[0], self.config.z_channels, pns[-1], pns[-1], device=indices[0].device)
        out = []
        for k in range(n - 1):
            f_hat = f_hat + vqvae.phi(vqvae.quantize.upsampled(indices[k], (pns[k],) * 2, (pns[-1],) * 2), k, n)
            out.append(F.interpolate(f_hat, size=(pns[k + 1],) * 2, mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def sample(self, vqvae: VQVAE, labels: torch.Tensor, generator: torch.Generator | None = None, cfg: float = 1.5,
               top_k: int = 0, top_p: float = 0.0, style: torch.Tensor | None = None, stop_scale: int | None = None,
               keep: list[torch.Tensor] | None = None, progress: Progress | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw scale by scale with classifier-free guidance (ramped from 0 at the first scale to `cfg` at the last)
        against the null class (with a style: against no style and the null class). `stop_scale`: stop after that
        many scales (the image of the tokens so far, at full size). `keep`: index maps of the first scales to keep
        instead of drawing them (an encoded draft's coarse scales). -> (images (B, 3, H, W) in 0..1, index maps)."""
        c, vq = self.config, vqvae
        pns, n = c.patch_nums, len(c.patch_nums)
        stop = n if stop_scale is None else max(1, min(n, stop_scale))
        b = labels.shape[0]
        both = torch.cat([labels, torch.full_like(labels, c.num_classes)])
        styles = None if style is None else torch.cat([style, torch.zeros_like(style)])  # the negative: no style
        cond = self.conditioning(both, styles)
        mod = self.shared_ada_lin(cond)
        pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        first = pns[0] ** 2
        x = cond[:, None].expand(2 * b, first, -1) + self.pos_start.expand(2 * b, -1, -1) + pos[:, :first]
        caches = [[] for _ in self.blocks]
        f_hat = cond.new_zeros(b, c.z_channels, pns[-1], pns[-1])
        out = []
        for k in range(stop):
            for block, cache in zip(self.blocks, caches):
                x = block(x, mod, None, cache)
            if keep is not None and k < len(keep):
                idx = keep[k].to(labels.device)
            else:
                logits = self._logits(x, cond)
                t = cfg * k / (n - 1)
                idx = draw(logits[:b] * (1 + t) - logits[b:] * t, generator, top_k, top_p)
            out.append(idx)
            full = (pns[-1],) * 2
            f_hat = f_hat + vq.phi(vq.quantize.upsampled(idx, (pns[k],) * 2, full), k, n)
            if progress is not None:
                progress(k + 1, stop)
            if k + 1 < stop:
                nxt = F.interpolate(f_hat, size=(pns[k + 1],) * 2, mode="area").flatten(2).transpose(1, 2)
                s, e = self.ranges[k + 1]
                x = (self.word_embed(nxt) + pos[:, s:e]).repeat(2, 1, 1)
        return vq.decode_f_hat(f_hat).add(1).mul(0.5), out


def draw(logits: torch.Tensor, generator: torch.Generator | None, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """One code per position from logits (B, l, V), among the top_k likeliest (0: all) and, of those, the nucleus:
    the codes left once the least likely ones, as long as their probabilities add up to at most 1 - top_p, are
    dropped (0: all; the likeliest code always stays). The draw happens on the generator's device (a CPU generator
    gives the same codes whatever device computed the logits). -> (B, l)."""
    b, n, v = logits.shape
    scores = logits
    if top_k > 0:
        kth_largest = scores.topk(min(top_k, v), dim=-1, sorted=False).values.amin(-1, keepdim=True)
        scores = scores.masked_fill(scores < kth_largest, -torch.inf)
    if top_p > 0:
        ascending, order = scores.sort(dim=-1)
        tail = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[..., -1] = False
        scores = scores.masked_fill(torch.zeros_like(tail).scatter(-1, order, tail), -torch.inf)
    probs = scores.softmax(-1).reshape(-1, v)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).view(b, n).to(logits.device)


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------
def _count(tensors: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in tensors for m in [re.match(pattern, k)] if m}
    if found != set(range(len(found))):
        raise ck.CheckpointError(f"indices of {pattern!r} are not 0..n-1: {sorted(found)}")
    return len(found)


def infer_vqvae_config(tensors: dict[str, torch.Tensor], source: str) -> VQVAEConfig:
    """The tokenizer's architecture from its weights (FoundationVision's names)."""
    try:
        ch = tensors["encoder.conv_in.weight"].shape[0]
        levels = _count(tensors, r"encoder\.down\.(\d+)\.")
        ch_mult = tuple(tensors[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        blocks = _count(tensors, r"encoder\.down\.0\.block\.(\d+)\.")
        vocab, z = tensors["quantize.embedding.weight"].shape
        if "quantize.quant_resi.qresi.weight" in tensors:
            share = 1
        elif "quantize.quant_resi.qresi_ls.0.weight" in tensors:
            share = _count(tensors, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.")
        else:
            raise ck.CheckpointError(f"{source}: no quantizer convolutions (quantize.quant_resi.*): not a VAR VQVAE")
        hits = tensors.get("quantize.ema_vocab_hit_SV")
        scales = hits.shape[0] if hits is not None else len(STANDARD_PATCH_NUMS)
    except KeyError as e:
        raise ck.CheckpointError(f"{source}: not a VAR VQVAE (FoundationVision/VAR parameter names): missing {e}; "
                                 "expected a file such as vae_ch160v4096z32.pth") from None
    return VQVAEConfig(vocab_size=vocab, z_channels=z, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
                       using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in tensors,
                       using_mid_sa="encoder.mid.attn_1.qkv.weight" in tensors, share_quant_resi=share,
                       scales=max(1, scales))


def infer_var_config(tensors: dict[str, torch.Tensor], source: str, num_heads: int | None = None,
                     patch_nums: tuple | None = None) -> VARConfig:
    """The transformer's architecture from its weights (FoundationVision's names); heads from the per-head
    temperature, else `num_heads`, else the file name (var_d16: 16 heads, as FoundationVision builds them)."""
    try:
        d, z = tensors["word_embed.weight"].shape
        depth = _count(tensors, r"blocks\.(\d+)\.")
        vocab = tensors["head.weight"].shape[0]
        classes = tensors["class_emb.weight"].shape[0] - 1
        tokens, scales = tensors["pos_1LC"].shape[1], tensors["lvl_embed.weight"].shape[0]
        hidden = tensors["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as e:
        raise ck.CheckpointError(f"{source}: not a VAR transformer (FoundationVision/VAR parameter names): missing "
                                 f"{e}; expected a file such as var_d16.pth") from None
    if "lvl_1L" in tensors:  # the scale of every token: the scales' sides exactly
        counts = torch.bincount(tensors["lvl_1L"].flatten().long(), minlength=scales).tolist()
        sides = [math.isqrt(n) for n in counts]
        if any(s * s != n for s, n in zip(sides, counts)):
            raise ck.CheckpointError(f"{source}: lvl_1L does not describe square token maps ({counts})")
        found = tuple(sides)
    elif patch_nums is not None:
        found = tuple(patch_nums)
    elif tokens == sum(p * p for p in STANDARD_PATCH_NUMS) and scales == len(STANDARD_PATCH_NUMS):
        found = STANDARD_PATCH_NUMS
    else:
        raise ck.CheckpointError(f"{source}: {scales} scales of {tokens} tokens in all are not VAR's standard "
                                 f"{STANDARD_PATCH_NUMS}, and the file does not say which (no lvl_1L)")
    if patch_nums is not None and tuple(patch_nums) != found:
        raise ck.CheckpointError(f"{source}: its scales are {found}, not {tuple(patch_nums)}")
    l2 = "blocks.0.attn.scale_mul_1H11" in tensors
    if l2:
        heads = tensors["blocks.0.attn.scale_mul_1H11"].shape[1]
        if num_heads is not None and num_heads != heads:
            raise ck.CheckpointError(f"{source}: the file has {heads} attention heads, not {num_heads}")
    elif num_heads:
        heads = num_heads
    else:
        m = re.search(r"var_d(\d+)", source.lower())
        if not m or int(m.group(1)) != depth:
            raise ck.CheckpointError(f"{source}: the number of attention heads is not stored in this file and its "
                                     "name does not say (var_d<depth>): choose it in the loader")
        heads = depth
    style = tensors["style_proj.weight"].shape[1] if "style_proj.weight" in tensors else 0
    return VARConfig(depth=depth, embed_dim=d, num_heads=heads, mlp_ratio=hidden / d, num_classes=classes,
                     vocab_size=vocab, z_channels=z, patch_nums=found, attn_l2_norm=l2,
                     shared_aln="blocks.0.ada_gss" in tensors, style_dim=style)


def _read(path: Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, meta = ck.load_safetensors(path)
        if meta.get("format") not in (None, fmt):
            raise ck.CheckpointError(f"{path.name}: a {meta.get('format')!r} file, not {fmt!r}")
        return tensors, meta
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        obj = ck.load_torch_weights(path)
        if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ck.CheckpointError(f"{path.name}: expected a state dict (name -> tensor), as FoundationVision/VAR's "
                                     "released .pth files are")
        return obj, {}
    raise ck.CheckpointError(f"{path.name}: unsupported file type '{suffix}'; use FoundationVision's .pth or a "
                             ".safetensors")


def _build(factory, tensors: dict, source: str, config) -> nn.Module:
    """build_checked (sizes first, then names and shapes on the meta device, then the weights), with the derived
    buffers computed from the config where the file leaves them out — and the codebook statistics, unused, replaced
    where their scale count differs, as FoundationVision's loader does. A file's own scale table and mask must be
    VAR's."""
    ck.check_config_sizes(config, source)
    if isinstance(config, VARConfig):
        lvl, mask = scale_tables(config.patch_nums)
        derived = {"lvl_1L": lvl, "attn_bias_for_masking": mask}
    else:
        derived = {"quantize.ema_vocab_hit_SV": torch.zeros(config.scales, config.vocab_size)}
    tensors = {k: v.float() for k, v in tensors.items()}
    for key, value in derived.items():
        given = tensors.get(key)
        if given is None or (key == "quantize.ema_vocab_hit_SV" and given.shape != value.shape):
            tensors[key] = value
        elif given.shape == value.shape and not torch.equal(given, value):
            raise ck.CheckpointError(f"{source}: {key} is not VAR's for the scales {config.patch_nums}")
    model = ck.build_checked(factory, tensors, source, config)
    return model.eval().requires_grad_(False)


@ck.user_file_loader("VAR VQVAE", (".pth", ".pt", ".bin", ".ckpt", ".safetensors"))
def load_vqvae(path) -> VQVAE:
    """FoundationVision's tokenizer (`vae_ch160v4096z32.pth`, a state dict) or a DiffuGAN .safetensors, strictly."""
    path = Path(path)
    tensors, meta = _read(path, VQVAE_SAFETENSORS_FORMAT)
    config = VQVAEConfig(**json.loads(meta["config"])) if "config" in meta else infer_vqvae_config(tensors, path.name)
    return _build(lambda: VQVAE(config), tensors, path.name, config)


@ck.user_file_loader("VAR transformer", (".pth", ".pt", ".bin", ".ckpt", ".safetensors"))
def load_var(path, num_heads: int | None = None, patch_nums: tuple | None = None) -> VAR:
    """FoundationVision's transformer (`var_d16.pth` … `var_d30.pth`, state dicts) or a DiffuGAN .safetensors,
    strictly."""
    path = Path(path)
    tensors, meta = _read(path, SAFETENSORS_FORMAT)
    if "config" in meta:
        config = VARConfig(**json.loads(meta["config"]))
    else:
        config = infer_var_config(tensors, path.name, num_heads, patch_nums)
    model = _build(lambda: VAR(config), tensors, path.name, config)
    model.style_clip = meta.get("style_clip", "")
    return model


def check_pair(vqvae: VQVAE, var: VAR, source: str = "") -> None:
    """The transformer must predict the tokenizer's codes: same vocabulary and code width."""
    v, c = vqvae.config, var.config
    if (v.vocab_size, v.z_channels) != (c.vocab_size, c.z_channels):
        raise ValueError(f"{source}the VAR transformer predicts {c.vocab_size} codes of width {c.z_channels} but the "
                         f"VQVAE has {v.vocab_size} of width {v.z_channels}: load the VQVAE it was trained with")


def save_var(model: VAR, path, half: bool = False) -> None:
    sd = {k: v.half() if half and v.is_floating_point() and k != "attn_bias_for_masking" else v
          for k, v in model.state_dict().items()}
    meta = {"format": SAFETENSORS_FORMAT, "config": asdict(model.config)}
    if getattr(model, "style_clip", ""):
        meta["style_clip"] = model.style_clip
    ck.save_safetensors(path, sd, meta)


def save_vqvae(model: VQVAE, path, half: bool = False) -> None:
    sd = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    ck.save_safetensors(path, sd, {"format": VQVAE_SAFETENSORS_FORMAT, "config": asdict(model.config)})
