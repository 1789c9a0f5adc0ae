"""Evaluation metrics of the zoo scripts, benchmarks, the demo and tests (not part of the node pack): edge F1 of a
refinement against its control edges, Spearman rank correlation of importance maps, PSNR / SSIM to originals and
the detail (high-frequency energy) of images."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of a 1-D tensor, ties sharing their mean rank (as Spearman's rho needs)."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() + 1) / 2  # mean of positions start..end-1 of each tie group
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (any shape, same number of elements); 0 when one is constant."""
    ra, rb = average_ranks(a.flatten().double()), average_ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


def psnr(a: torch.Tensor, b: torch.Tensor, low: float = 0.0) -> float:
    """Mean per-image PSNR in dB of images `a` (clamped) to `b`, pixels in low..1 (0..1, or -1..1 with low -1)."""
    mse = (a.clamp(low, 1) - b).square().flatten(1).mean(1)
    return float((10 * torch.log10((1 - low) ** 2 / mse.clamp_min(1e-10))).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (kornia, 11 px window) of images `a` (clamped) to `b`, pixels in 0..1."""
    import kornia

    return float(kornia.metrics.ssim(a.clamp(0, 1), b, 11).mean())


def high_frequency(images: torch.Tensor) -> float:
    """Mean high-frequency energy of images in 0..1: mean squared difference to a Gaussian blur (sigma 1.5 px)."""
    import kornia

    blurred = kornia.filters.gaussian_blur2d(images, (9, 9), (1.5, 1.5))
    return float((images - blurred).square().mean())
