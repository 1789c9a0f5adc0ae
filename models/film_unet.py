"""Latent diffusion UNet with FiLM conditioning (design note 004): a convolutional ε-predictor on SD1-format latents.

    x_t (B, 4, H, W), t, style (B, style_dim) -> ε (B, 4, H, W)

- **Conditioning**: the timestep's sinusoidal embedding and the style embedding (a DIFFUGAN_STYLE vector from the zoo
  CLIP, or none) are each turned into a vector by a small MLP and summed: `cond = time + style`. Every residual block
  scales and shifts its normalised features by it — FiLM, `h = norm(h) * (1 + scale) + shift` with (scale, shift) a
  linear map of `cond` — so the prompt reaches every block, not only the input. A style row of zeros means "no
  style": the learned null embedding takes its place (the unconditional side of classifier-free guidance).
- **Network**: residual blocks (GroupNorm, SiLU, 3×3 convs) at each resolution, self-attention blocks at the lowest
  resolutions, skip connections from the encoder to the decoder, strided-conv down- and nearest-neighbour
  upsampling. The last conv of every block and the output conv start at zero, so a fresh network is the identity on
  its skips and predicts ε = 0.
- **Schedule**: Stable Diffusion 1's (scaled-linear β from 0.00085 to 0.012 over 1000 steps), so every ComfyUI
  sampler — DDIM, Euler, DPM++ — samples it as it samples SD1 (`nodes/film_unet.py` loads it as a stock MODEL).
- **Any latent size**: inputs are padded (reflect) to a multiple of the network's total downsampling and the output
  cropped back.

Files: safetensors with `format = diffugan.film_unet.v1` and the JSON config in the metadata (plus the identity of
the CLIP whose embeddings it was trained on); loaded strictly (keys and shapes, the architecture first built on the
meta device).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints as ck

SAFETENSORS_FORMAT = "diffugan.film_unet.v1"
NUM_TIMESTEPS = 1000
SD1_BETA_START, SD1_BETA_END = 0.00085, 0.012


def sd1_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of Stable Diffusion 1's schedule (scaled linear β), the one ComfyUI's samplers use for this model."""
    betas = torch.linspace(SD1_BETA_START ** 0.5, SD1_BETA_END ** 0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


@dataclass(frozen=True)
class FiLMUNetConfig:
    in_channels: int = 4
    base_channels: int = 64
    channel_mults: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple = (2,)  # levels (0 = full latent resolution) with self-attention
    num_heads: int = 4
    style_dim: int = 256  # 0: unconditional
    groups: int = 32

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        for m in self.channel_mults:
            if (self.base_channels * m) % self.groups:
                raise ValueError(f"channel width {self.base_channels * m} is not divisible by {self.groups} groups")
        if self.num_heads < 1 or any((self.base_channels * m) % self.num_heads for m in self.channel_mults):
            raise ValueError(f"num_heads {self.num_heads} must divide every channel width")
        if any(not 0 <= a < len(self.channel_mults) for a in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} outside 0..{len(self.channel_mults) - 1}")

    @property
    def cond_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def multiple(self) -> int:
        """Latent sides are padded to a multiple of this (the total downsampling)."""
        return 2 ** (len(self.channel_mults) - 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM(cond) -> SiLU -> conv (zero-init), plus the skip."""

    def __init__(self, cin: int, cout: int, cond_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = _zero(nn.Linear(cond_dim, 2 * cout))  # starts as the identity modulation
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the positions of a feature map, residual (output projection zero-init)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, dh)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class FiLMUNet(nn.Module):
    def __init__(self, config: FiLMUNetConfig):
        super().__init__()
        self.config = c = config
        self.style_clip = ""  # identity of the CLIP whose embeddings it was trained on
        ch = [c.base_channels * m for m in c.channel_mults]
        d = c.cond_dim
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, d), nn.SiLU(), nn.Linear(d, d))
        if c.style_dim:
            self.style_mlp = nn.Sequential(nn.Linear(c.style_dim, d), nn.SiLU(), nn.Linear(d, d))
            self.null_style = nn.Parameter(torch.zeros(d))  # "no style": the unconditional side of CFG
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur = [ch[0]], ch[0]
        for level, width in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(cur, width, d, c.groups))
                cur = width
                if level in c.attention_levels:
                    blocks.append(AttentionBlock(cur, c.num_heads, c.groups))
                skips.append(cur)
            if level < len(ch) - 1:
                blocks.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
            self.down.append(blocks)
        self.mid = nn.ModuleList([ResBlock(cur, cur, d, c.groups), AttentionBlock(cur, c.num_heads, c.groups),
                                  ResBlock(cur, cur, d, c.groups)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skips.pop(), ch[level], d, c.groups))
                cur = ch[level]
                if level in c.attention_levels:
                    blocks.append(AttentionBlock(cur, c.num_heads, c.groups))
            if level > 0:
                blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                            nn.Conv2d(cur, cur, 3, padding=1)))
            self.up.append(blocks)
        self.norm_out = nn.GroupNorm(c.groups, cur)
        self.conv_out = _zero(nn.Conv2d(cur, c.in_channels, 3, padding=1))

    def conditioning(self, t: torch.Tensor, style: torch.Tensor | None, batch: int) -> torch.Tensor:
        """cond = time MLP + style MLP (the null embedding where the style is absent or a row of zeros)."""
        cond = self.time_mlp(timestep_embedding(t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(-1),
                                                self.config.base_channels).to(self.conv_in.weight.dtype))
        if not self.config.style_dim:
            if style is not None:
                raise ValueError("this FiLM UNet was trained without style conditioning: give it no style")
            return cond
        null = self.null_style.to(cond.dtype).expand(batch, -1)
        if style is None:
            return cond + null
        if style.shape != (batch, self.config.style_dim):
            raise ValueError(f"style must be ({batch}, {self.config.style_dim}); got {tuple(style.shape)}")
        style = style.to(cond.dtype)
        given = style.abs().sum(-1, keepdim=True) > 0
        return cond + torch.where(given, self.style_mlp(style), null)

    def forward(self, x: torch.Tensor, t: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        m = self.config.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # reflect where it can (needs more pixels than the pad), else replicate
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        cond = self.conditioning(t, style, b)
        hidden = self.conv_in(x.to(self.conv_in.weight.dtype))
        skips = [hidden]
        for blocks in self.down:
            for block in blocks:
                hidden = block(hidden, cond) if isinstance(block, (ResBlock, AttentionBlock)) else block(hidden)
                if not isinstance(block, AttentionBlock):
                    skips.append(hidden)
                else:
                    skips[-1] = hidden
        for block in self.mid:
            hidden = block(hidden, cond)
        for blocks in self.up:
            for block in blocks:
                if isinstance(block, ResBlock):
                    hidden = block(torch.cat([hidden, skips.pop()], dim=1), cond)
                elif isinstance(block, AttentionBlock):
                    hidden = block(hidden)
                else:
                    hidden = block(hidden)
        out = self.conv_out(F.silu(self.norm_out(hidden)))
        return out[:, :, :h, :w]


def save_film_unet(model: FiLMUNet, path, half: bool = False) -> None:
    sd = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = {"format": SAFETENSORS_FORMAT, "config": asdict(model.config)}
    if model.style_clip:
        meta["style_clip"] = model.style_clip
    ck.save_safetensors(path, sd, meta)


@ck.user_file_loader("FiLM UNet", (".safetensors",))
def load_film_unet(path) -> FiLMUNet:
    """A DiffuGAN FiLM UNet .safetensors, strictly (keys and shapes; the architecture from the file's metadata,
    built on the meta device first)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ck.CheckpointError(f"{path.name}: a FiLM UNet is a .safetensors file (made by "
                                 "scripts/train_zoo_unet.py or models.film_unet.save_film_unet)")
    tensors, meta = ck.load_safetensors(path)
    if meta.get("format") != SAFETENSORS_FORMAT or "config" not in meta:
        raise ck.CheckpointError(f"{path.name}: not a DiffuGAN FiLM UNet (metadata format {meta.get('format')!r}, "
                                 f"expected {SAFETENSORS_FORMAT!r}); a Stable Diffusion UNet loads with the stock "
                                 "checkpoint loaders")
    try:
        config = FiLMUNetConfig(**json.loads(meta["config"]))
    except (TypeError, ValueError) as e:
        raise ck.CheckpointError(f"{path.name}: bad FiLM UNet config in the metadata ({e})") from None
    tensors = {k: v.float() for k, v in tensors.items()}
    model = ck.build_checked(lambda: FiLMUNet(config), tensors, path.name, config)
    model.style_clip = meta.get("style_clip", "")
    return model.eval().requires_grad_(False)
