"""Counted FLOPs (multiply-adds x 2) of the DiT's transformer, for the region-adaptive log line and the benchmarks.

Counted, not measured: linear layers and attention's two matrix products, the patch embedding and the final layer;
norms, activations and the adaLN regression (per image, not per token) are left out. The ViT ControlNet counts its
branch with block_flops too (models/vit_controlnet.py)."""
from __future__ import annotations


def block_flops(config, active: int, total: int) -> int:
    """One DiT block for `active` query tokens attending over `total` tokens (config: a DiTConfig)."""
    d, hidden = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
    linear = 2 * active * (3 * d * d + d * d + 2 * d * hidden)
    attention = 2 * 2 * active * total * d
    return linear + attention


def transformer_flops(config, active: int, total: int) -> int:
    """A transformer pass (blocks, patch embedding and final layer) on `active` of `total` tokens."""
    p2c = config.patch_size ** 2 * config.in_channels
    embed = 2 * total * p2c * config.hidden_size
    final = 2 * active * config.hidden_size * config.patch_size ** 2 * config.out_channels
    return config.depth * block_flops(config, active, total) + embed + final
