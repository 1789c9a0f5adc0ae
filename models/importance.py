"""Feature-importance stage: where detail matters, as a map in 0..1.

Pure PyTorch (never imports ComfyUI). Images are NCHW float in 0..1, importance maps N1HW in 0..1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# A perceptually ordered heat colormap: dark blue (unimportant) -> blue -> teal -> yellow -> red (important).
# Anchors (position, r, g, b); values between anchors are interpolated linearly.
HEAT_ANCHORS = torch.tensor(
    [
        [0.00, 0.05, 0.03, 0.30],
        [0.25, 0.10, 0.30, 0.90],
        [0.50, 0.10, 0.80, 0.60],
        [0.75, 1.00, 0.85, 0.10],
        [1.00, 0.90, 0.10, 0.05],
    ]
)


def check_finite(name: str, t: torch.Tensor) -> None:
    """Refuse NaN / inf with an error that names the input."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"'{name}' contains {bad} NaN/inf values; fix the node that produced it")


def match_mask(mask: torch.Tensor, batch: int, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """Bring a (N,1,h,w) map to (batch,1,height,width).

    Policy (documented in the README): a map of another spatial size is resized bilinearly to the image size,
    because masks drawn on a preview or made at latent resolution are routinely smaller; a batch of 1 is
    broadcast over the image batch; any other batch mismatch is refused.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"'{name}' must be a single-channel map (N,1,H,W), got shape {tuple(mask.shape)}")
    n = mask.shape[0]
    if n not in (1, batch):
        raise ValueError(
            f"'{name}' has batch {n} but the image has batch {batch}; give one map per image or a single map for all"
        )
    if mask.shape[-2:] != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return mask.expand(batch, 1, height, width)


def colorize(values: torch.Tensor, anchors: torch.Tensor = HEAT_ANCHORS) -> torch.Tensor:
    """Map (N,1,H,W) values in 0..1 to (N,3,H,W) colours by piecewise-linear interpolation of `anchors`."""
    anchors = anchors.to(device=values.device, dtype=values.dtype)
    pos, rgb = anchors[:, 0].contiguous(), anchors[:, 1:]  # (K,), (K, 3)
    v = values.clamp(0, 1)[:, 0]  # (N, H, W)
    hi = torch.searchsorted(pos, v.contiguous(), right=False).clamp(1, len(pos) - 1)  # upper anchor index
    lo = hi - 1
    t = ((v - pos[lo]) / (pos[hi] - pos[lo])).unsqueeze(-1)  # (N, H, W, 1)
    out = rgb[lo] * (1 - t) + rgb[hi] * t  # (N, H, W, 3)
    return out.permute(0, 3, 1, 2)


def heatmap_overlay(image: torch.Tensor, importance: torch.Tensor, opacity: float = 0.55) -> torch.Tensor:
    """Blend a heat-coloured importance map over an image.

    image: (N,3,H,W) in 0..1; importance: (N or 1,1,h,w) in 0..1 (resized to H,W if needed).
    opacity: 0 returns the image unchanged, 1 returns the pure heatmap.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"'image' must be RGB (N,3,H,W), got shape {tuple(image.shape)}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"'opacity' must be in 0..1, got {opacity}")
    check_finite("image", image)
    check_finite("importance", importance)
    n, _, h, w = image.shape
    m = match_mask(importance.to(image), n, h, w, name="importance").clamp(0, 1)
    return torch.lerp(image, colorize(m), opacity).clamp(0, 1)
