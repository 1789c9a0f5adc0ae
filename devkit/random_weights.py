"""Random but non-trivial weights for tests, the demo and benchmarks (never a stand-in for trained weights)."""
from __future__ import annotations

import torch


def perturb(module: torch.nn.Module, scale: float = 0.05, skip: tuple[str, ...] = ("pos_embed",)) -> torch.nn.Module:
    """Add N(0, scale²) noise to every parameter but `skip` (DiT's fixed position table), so layers that start at
    exactly zero (adaLN-Zero, zero-initialised projections) do work. Draws from the global RNG: seed first."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name not in skip:
                p.add_(torch.randn_like(p) * scale)
    return module
