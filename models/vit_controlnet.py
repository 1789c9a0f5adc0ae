"""Adaptive ViT ControlNet for the DiT refiner (pure PyTorch).

Design (PixArt-δ's ControlNet-Transformer, made adaptive):
- The control image (an edge map in pixels, any size; it is resized to the token grid) is cut into patches of
  `patch_size * vae_factor` pixels, one per DiT token, embedded, and given the DiT's own resolution-agnostic sin-cos
  position embedding.
- The control branch is a copy of the DiT's first N blocks. Its input is the DiT's token embeddings plus a
  zero-initialised projection of the control tokens; after each of its blocks a zero-initialised linear projection
  is added to the output of the corresponding DiT block. A fresh ControlNet therefore changes nothing.
- Adaptive:
  * token budget: the branch runs on the top-k tokens by priority only (k = budget x tokens; priority = importance,
    optionally mixed with the control image's edge density); skipped tokens inject nothing, and the branch's cost
    falls with k (linear layers linearly, attention quadratically). Budget 1 is the dense path itself.
  * layer scale: a learned gain per layer times the user's strength, optionally modulated per token by importance
    and raised where edges are dense.
Strength 0 returns no residuals at all, so the DiT runs exactly as without the ControlNet.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ck
from .dit import DiT, DiTBlock, block_flops, sincos_pos_embed

SAFETENSORS_FORMAT = "diffugan.vit_controlnet.v1"


@dataclass
class ControlNetConfig:
    hidden_size: int
    num_heads: int
    depth: int  # number of DiT blocks copied into the control branch
    patch_size: int  # the DiT's patch size in latent pixels
    base_depth: int  # depth of the DiT it belongs to
    mlp_ratio: float = 4.0
    hint_channels: int = 3
    vae_factor: int = 8  # image pixels per latent pixel

    @property
    def hint_patch(self) -> int:
        return self.patch_size * self.vae_factor


@dataclass
class ControlSettings:
    """What a user sets when applying the ControlNet."""

    strength: float = 1.0
    budget: float = 1.0  # fraction of tokens the control branch processes
    importance_modulation: float = 0.0  # 0: same strength everywhere; 1: strength x importance per token
    edge_priority: float = 0.0  # 0: tokens chosen by importance; 1: by edge density of the control image
    edge_gain: float = 0.0  # extra strength where edges are dense: x (1 + edge_gain * density)


class ViTControlNet(nn.Module):
    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = c = config
        self.hint_embed = nn.Conv2d(c.hint_channels, c.hidden_size, kernel_size=c.hint_patch, stride=c.hint_patch)
        self.before_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.after_proj = nn.ModuleList(nn.Linear(c.hidden_size, c.hidden_size) for _ in range(c.depth))
        self.layer_gain = nn.Parameter(torch.ones(c.depth))
        w = self.hint_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.hint_embed.bias)
        for layer in [self.before_proj, *self.after_proj]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_dit(cls, dit: DiT, depth: int, hint_channels: int = 3) -> "ViTControlNet":
        """A fresh ControlNet for `dit`: its first `depth` blocks copied, projections at zero."""
        d = dit.config
        if not 1 <= depth <= d.depth:
            raise ValueError(f"control depth {depth} must be between 1 and the DiT's depth {d.depth}")
        net = cls(ControlNetConfig(d.hidden_size, d.num_heads, depth, d.patch_size, d.depth, d.mlp_ratio,
                                   hint_channels))
        for src, dst in zip(dit.blocks, net.blocks):
            dst.load_state_dict(src.state_dict())
        return net.to(next(dit.parameters()).dtype)

    def check_fits(self, dit: DiT) -> None:
        """Refuse a DiT this ControlNet was not made for, naming what differs."""
        c, d = self.config, dit.config
        wrong = [f"{name} {mine} vs {theirs}" for name, mine, theirs in [
            ("hidden size", c.hidden_size, d.hidden_size), ("heads", c.num_heads, d.num_heads),
            ("patch size", c.patch_size, d.patch_size), ("depth", c.base_depth, d.depth),
            ("mlp ratio", c.mlp_ratio, d.mlp_ratio)] if mine != theirs]
        if wrong:
            raise ValueError("this ControlNet was made for another DiT (ControlNet vs DiT: " + ", ".join(wrong)
                             + "); use a ControlNet trained for this DiT")

    # --- inputs -------------------------------------------------------------------------------------------------
    def prepare_hint(self, hint: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Control image (N, C, H, W) in 0..1, any size -> (N, hint_channels, gh*P, gw*P), P = pixels per token.
        Grey or RGB(A) inputs are matched to the channels the ControlNet was trained with."""
        c = self.config.hint_channels
        if hint.shape[1] == 4:
            hint = hint[:, :3]
        if hint.shape[1] != c:
            hint = hint.mean(1, keepdim=True).expand(-1, c, -1, -1) if hint.shape[1] in (1, 3) else None
            if hint is None:
                raise ValueError(f"the control image must have 1, 3 or 4 channels (the ControlNet uses {c})")
        size = (grid[0] * self.config.hint_patch, grid[1] * self.config.hint_patch)
        if tuple(hint.shape[-2:]) != size:
            hint = F.interpolate(hint.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return hint

    def edge_density(self, hint: torch.Tensor) -> torch.Tensor:
        """Prepared hint -> (N, T): mean edge intensity in each token's patch, 0..1."""
        p = self.config.hint_patch
        return F.avg_pool2d(hint.float().mean(1, keepdim=True), p).flatten(1).clamp(0, 1)

    def select(self, priority: torch.Tensor, budget: float) -> torch.Tensor | None:
        """Top-k token indices per image (N, k), sorted; None when the budget covers every token (dense path)."""
        t = priority.shape[1]
        k = max(1, math.ceil(budget * t - 1e-9))
        if k >= t:
            return None
        return priority.topk(k, dim=1).indices.sort(dim=1).values

    # --- the branch ---------------------------------------------------------------------------------------------
    def residuals(self, tokens: torch.Tensor, c: torch.Tensor, hint: torch.Tensor, grid: tuple[int, int],
                  settings: ControlSettings, importance: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """Per-layer residuals (N, T, D) to add to the outputs of the DiT's first `depth` blocks, or None when the
        strength is 0. tokens: the DiT's embedded tokens (N, T, D); c: its adaLN conditioning (N, D); hint: prepared
        control image (N or 1, C, gh*P, gw*P); importance: (N or 1, T) in 0..1 or None (uniform)."""
        if settings.strength == 0:
            return None
        n, t, d = tokens.shape
        hint = hint.to(tokens.dtype).expand(n, -1, -1, -1) if hint.shape[0] == 1 else hint.to(tokens.dtype)
        if hint.shape[0] != n:
            raise ValueError(f"the control image batch ({hint.shape[0]}) does not match the latent batch ({n}); "
                             "give one control image or one per image")
        density = self.edge_density(hint)
        imp = torch.ones(n, t, device=tokens.device) if importance is None else importance.to(tokens.device).float()
        imp = imp.expand(n, -1) if imp.shape[0] == 1 else imp
        priority = (1 - settings.edge_priority) * imp + settings.edge_priority * density
        idx = self.select(priority, settings.budget)

        pos = sincos_pos_embed(d, grid[0], grid[1])[None].to(tokens.device, tokens.dtype)
        control = self.hint_embed(hint).flatten(2).transpose(1, 2) + pos  # (N, T, D)
        scale = settings.strength * (1 - settings.importance_modulation + settings.importance_modulation * imp)
        scale = scale * (1 + settings.edge_gain * density)  # (N, T)
        h = tokens + self.before_proj(control)
        if idx is not None:
            gather = idx.unsqueeze(-1).expand(-1, -1, d)
            h, scale = h.gather(1, gather), scale.gather(1, idx)
        out = []
        for i, (block, proj) in enumerate(zip(self.blocks, self.after_proj)):
            h = block(h, c)
            r = proj(h) * (self.layer_gain[i] * scale).unsqueeze(-1).to(h.dtype)
            if idx is not None:
                r = tokens.new_zeros(n, t, d).scatter(1, gather, r)
            out.append(r)
        return out

    def flops(self, tokens: int, budget: float) -> int:
        """Counted FLOPs of the control branch for `tokens` tokens at a budget (hint embedding + blocks + projections)."""
        c = self.config
        k = tokens if budget >= 1 else max(1, math.ceil(budget * tokens - 1e-9))
        embed = 2 * tokens * c.hint_channels * c.hint_patch ** 2 * c.hidden_size
        proj = 2 * tokens * c.hidden_size ** 2 + c.depth * 2 * k * c.hidden_size ** 2
        blocks = c.depth * block_flops(c, k, k)  # reads hidden_size and mlp_ratio, which this config shares
        return embed + proj + blocks


# --------------------------------------------------------------------------------------------------------------
# Edges: the control images, and how well an image follows them
# --------------------------------------------------------------------------------------------------------------
def canny_edges(image: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """Binary Canny edges (kornia) of (N, 3 or 1, H, W) images in 0..1 -> (N, 1, H, W) in {0, 1}."""
    import kornia

    if low >= high:
        raise ValueError(f"low_threshold ({low}) must be below high_threshold ({high})")
    if not torch.isfinite(image).all():
        raise ValueError("'image' contains NaN or infinite values")
    x = image.float().clamp(0, 1)
    # kornia's hysteresis loops until nothing changes, over the whole batch at once: small chunks finish far sooner
    edges = torch.cat([kornia.filters.canny(x[i:i + 16], low_threshold=low, high_threshold=high)[1]
                       for i in range(0, len(x), 16)]) if len(x) else x[:, :1]
    return (edges > 0.5).to(image.dtype)


def edge_f1(pred: torch.Tensor, target: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Per image F1 of binary edge maps (N, 1, H, W), an edge pixel counting as matched within `tolerance` pixels
    (Chebyshev): precision = predicted edges near a target edge, recall = target edges near a predicted edge."""
    k = 2 * tolerance + 1
    near_t = F.max_pool2d(target.float(), k, 1, tolerance)
    near_p = F.max_pool2d(pred.float(), k, 1, tolerance)
    p, t = pred.float(), target.float()
    precision = (p * near_t).sum((1, 2, 3)) / p.sum((1, 2, 3)).clamp_min(1)
    recall = (t * near_p).sum((1, 2, 3)) / t.sum((1, 2, 3)).clamp_min(1)
    return 2 * precision * recall / (precision + recall).clamp_min(1e-8)


def save_controlnet(net: ViTControlNet, path, base: str = "", half: bool = False) -> None:
    """`half`: store fp16 (the loader computes in fp32 either way)."""
    sd = {k: v.half() if half else v for k, v in net.state_dict().items()}
    ck.save_safetensors(path, sd, {"format": SAFETENSORS_FORMAT, "config": asdict(net.config), "base": base})


def load_controlnet(path) -> ViTControlNet:
    tensors, config = ck.load_config_safetensors(
        path, SAFETENSORS_FORMAT, "DiffuGAN ViT ControlNet", ControlNetConfig,
        "Stable Diffusion ControlNets do not fit a DiT; use one made for this DiT (vit_controlnet.save_controlnet)")
    net = ViTControlNet(config)
    ck.check_state_dict(net, tensors, Path(path).name)
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return net.eval().requires_grad_(False)
