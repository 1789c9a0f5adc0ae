"""What the importance nodes show and read in the UI, pure torch: the heat-coloured preview of a MASK over an image
and the clicked emphasis points (JSON written by the frontend extension or typed) turned into a mask."""
from __future__ import annotations

import json
import math

import torch

from ..models.importance import check_finite, match_mask

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


def parse_points(text: str) -> list[dict]:
    """Clicked points as JSON: a list of {"x", "y", "radius", "weight"} in image pixels ("radius" default 32,
    "weight" default 1). An empty string means no points."""
    if not text or not text.strip():
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"'points' is not valid JSON ({e.msg} at character {e.pos}); expected e.g. "
                         '[{"x": 120, "y": 80, "radius": 24, "weight": 1}]') from None
    except RecursionError:
        raise ValueError("'points' is nested too deeply to be a list of points; expected e.g. "
                         '[{"x": 120, "y": 80, "radius": 24, "weight": 1}]') from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError("'points' must be a JSON list of {x, y, radius, weight} objects")
    points = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or "x" not in p or "y" not in p:
            raise ValueError(f"'points' item {i} must be an object with at least x and y, got {p!r}")
        try:
            pt = {"x": float(p["x"]), "y": float(p["y"]), "radius": float(p.get("radius", 32)),
                  "weight": float(p.get("weight", 1.0))}
        except (TypeError, ValueError):
            raise ValueError(f"'points' item {i} has a non-numeric value: {p!r}") from None
        if not all(math.isfinite(v) for v in pt.values()) or pt["radius"] <= 0:
            raise ValueError(f"'points' item {i} needs finite numbers and radius > 0, got {p!r}")
        points.append(pt)
    return points


def points_to_mask(points: list[dict], height: int, width: int) -> torch.Tensor:
    """Gaussian blobs (sigma = radius / 2, so a blob falls to 0.14 of its weight at the radius), combined by max,
    clamped to 0..1. Returns (1,1,H,W)."""
    mask = torch.zeros(1, 1, height, width)
    if not points:
        return mask
    yy = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5
    xx = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5
    for p in points:
        sigma = p["radius"] / 2
        blob = p["weight"] * torch.exp(-((xx - p["x"]) ** 2 + (yy - p["y"]) ** 2) / (2 * sigma * sigma))
        mask[0, 0] = torch.maximum(mask[0, 0], blob)
    return mask.clamp(0, 1)
