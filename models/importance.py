"""Feature-importance stage: where detail matters, as a map in 0..1.

Pure PyTorch (never imports ComfyUI). Images are NCHW float in 0..1, importance maps N1HW in 0..1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints as ck

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


# --------------------------------------------------------------------------------------------------------------
# Analytic pre-scorer (no weights)
# --------------------------------------------------------------------------------------------------------------
# Feature weights of the analytic score (each feature is first normalised per image to ~0..1, by its 99th
# percentile but by no less than its ANALYTIC_FLOORS value, so that a featureless image scores 0, not noise):
ANALYTIC_FLOORS = {"gradient": 0.05, "contrast": 0.03, "high_freq": 0.02, "edges": 0.05}
SCORE_FLOOR = 0.05
ANALYTIC_WEIGHTS = {
    "gradient": 0.35,  # Sobel gradient magnitude: outlines, texture
    "contrast": 0.25,  # local standard deviation of luminance in a 9x9 window
    "high_freq": 0.25,  # band-pass energy |x - blur(x)| at sigma 1, 2 and 4 (fine detail at several scales)
    "edges": 0.15,  # Canny edge density: thin structure (eyes, text strokes) that weak gradients miss
}
WORK_SIZE = 256  # features are computed with the image's long side at this size: cost and scale independent of H, W


def _normalise_per_image(x: torch.Tensor, floor: float, q: float = 0.99) -> torch.Tensor:
    """Divide each map by its q-quantile (a robust max), but by no less than `floor`, and clamp to 0..1.
    The floor keeps a flat image flat: without it, float noise on a featureless image is stretched to 1. (N,1,H,W)."""
    flat = x.flatten(1)
    scale = torch.quantile(flat, q, dim=1).clamp_min(floor).view(-1, 1, 1, 1)
    return (x / scale).clamp(0, 1)


def analytic_importance(image: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Where detail matters, from image statistics alone: a weighted mix of gradient, local contrast,
    multi-scale high-frequency energy and edge density (ANALYTIC_WEIGHTS), computed at WORK_SIZE, smoothed into
    regions, normalised per image to 0..1 (a flat image stays 0: see ANALYTIC_FLOORS) and returned at the image
    size.

    image: (N,3,H,W) in 0..1 -> (N,1,H,W) in 0..1. smoothing scales the region blur (0 = none).
    """
    from kornia.color import rgb_to_grayscale
    from kornia.filters import box_blur, canny, gaussian_blur2d, sobel

    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"'image' must be RGB (N,3,H,W), got shape {tuple(image.shape)}")
    check_finite("image", image)
    n, _, h, w = image.shape
    scale = WORK_SIZE / max(h, w)
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    x = F.interpolate(image.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    y = rgb_to_grayscale(x.clamp(0, 1))  # (N,1,h,w)

    gradient = sobel(y, eps=0.0)
    mean, mean_sq = box_blur(y, 9), box_blur(y * y, 9)
    contrast = (mean_sq - mean * mean).clamp_min(0).sqrt()
    high_freq = sum((y - gaussian_blur2d(y, _kernel(s), (s, s))).abs() for s in (1.0, 2.0, 4.0)) / 3
    edges = canny(y, 0.1, 0.2)[1]
    edge_density = box_blur(edges, 9)

    feats = {"gradient": gradient, "contrast": contrast, "high_freq": high_freq, "edges": edge_density}
    score = sum(ANALYTIC_WEIGHTS[k] * _normalise_per_image(v, ANALYTIC_FLOORS[k]) for k, v in feats.items())
    if smoothing > 0:
        s = 4.0 * smoothing  # region scale: ~1.5 % of the long side per unit of smoothing
        score = gaussian_blur2d(score, _kernel(s), (s, s))
    score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
    return _normalise_per_image(score, SCORE_FLOOR).to(image.dtype)


def _kernel(sigma: float) -> int:
    return 2 * int(math.ceil(3 * sigma)) + 1


# --------------------------------------------------------------------------------------------------------------
# User emphasis: painted masks and clicked points
# --------------------------------------------------------------------------------------------------------------
MERGE_MODES = ("max", "add", "multiply")


def merge_emphasis(score: torch.Tensor, user: torch.Tensor, mode: str = "max", strength: float = 1.0) -> torch.Tensor:
    """Combine a score map with user emphasis, both (N,1,H,W) in 0..1 (user broadcast / resized to the score).

    max:      max(score, strength * user)            -- paint raises, never lowers
    add:      clamp(score + strength * user, 0, 1)
    multiply: score * ((1 - strength) + strength * user)  -- the user mask gates the score
    strength 0 returns the score unchanged in every mode.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {mode!r}; choose one of {', '.join(MERGE_MODES)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"'strength' must be in 0..1, got {strength}")
    check_finite("importance", score)
    check_finite("user mask", user)
    n, _, h, w = score.shape
    user = match_mask(user.to(score), n, h, w, name="user mask").clamp(0, 1)
    if mode == "max":
        return torch.maximum(score, strength * user)
    if mode == "add":
        return (score + strength * user).clamp(0, 1)
    return score * ((1 - strength) + strength * user)


# --------------------------------------------------------------------------------------------------------------
# Compute budget: importance -> K quantised work levels whose mean matches a budget
# --------------------------------------------------------------------------------------------------------------
def budget_levels(importance: torch.Tensor, levels: int, budget: float, iters: int = 40) -> torch.Tensor:
    """Turn importance into a work map with `levels` values {0, 1/(K-1), ..., 1} whose mean is as close to
    `budget` as quantisation allows, per image, with the most important pixels kept at full work.

    Less work than the map asks for: work = quantise(importance^gamma), gamma >= 1 found by bisection (0 stays 0, 1
    stays 1: the least important lose work first); where pixels at exactly 1 alone exceed the budget (a painted
    mask), a negative shift instead. More: work = quantise(clamp(importance + shift, 0, 1)), shift >= 0 (everything
    gains). Both keep the order (more important never gets less work) and are deterministic. Budget 0 is
    no work at all. (N,1,H,W) -> (N,1,H,W).
    """
    if levels < 2:
        raise ValueError(f"'levels' must be at least 2, got {levels}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"'budget' must be in 0..1 (fraction of full work), got {budget}")
    check_finite("importance", importance)
    m = importance.clamp(0, 1).double()
    k = levels - 1
    if budget == 0:
        return torch.zeros_like(importance)

    def quantised(v: torch.Tensor) -> torch.Tensor:
        return torch.round(v.clamp(0, 1) * k) / k

    def shifted(x: torch.Tensor) -> torch.Tensor:  # x in 0..1: the shift
        return quantised(m + x.view(-1, 1, 1, 1))

    def powered(x: torch.Tensor) -> torch.Tensor:  # x in 0..1: gamma = 2^(20 x), 1 .. 2^20
        return quantised(m ** torch.exp2(20 * x).view(-1, 1, 1, 1))

    def lowered(x: torch.Tensor) -> torch.Tensor:  # x in 0..1: a negative shift, for maps saturated at 1
        return quantised(m - x.view(-1, 1, 1, 1))

    n = m.shape[0]
    over = quantised(m).mean(dim=(1, 2, 3)) >= budget  # the map asks for more than the budget: power it down
    # ... unless even the largest power stays over it (pixels at exactly 1, e.g. a painted mask): lower everything
    saturated = over & (powered(torch.ones(n, dtype=torch.float64)).mean(dim=(1, 2, 3)) > budget + 0.5 / k)
    best = torch.empty_like(m)
    for which, rule, sign in ((over & ~saturated, powered, -1.0), (saturated, lowered, -1.0), (~over, shifted, 1.0)):
        rows = which.nonzero().squeeze(1)  # sign: the mean falls with the power and the lowering, grows with a shift
        if not len(rows):
            continue
        lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        for _ in range(iters):
            mid = (lo + hi) / 2
            below = sign * (rule(mid).mean(dim=(1, 2, 3)) - budget) < 0
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        cand_lo, cand_hi = rule(lo), rule(hi)
        err_lo = (cand_lo.mean(dim=(1, 2, 3)) - budget).abs()
        err_hi = (cand_hi.mean(dim=(1, 2, 3)) - budget).abs()
        pick = torch.where((err_hi <= err_lo).view(-1, 1, 1, 1), cand_hi, cand_lo)
        best[rows] = pick[rows]
    return best.to(importance.dtype)


# --------------------------------------------------------------------------------------------------------------
# Learned scorer: a small MobileNetV3-style CNN, distilled from what the refiner actually changes
# --------------------------------------------------------------------------------------------------------------
SCORER_FORMAT = "diffugan.importance_scorer.v1"


@dataclass(frozen=True)
class ScorerConfig:
    stem: int = 16
    # (out channels, stride, expansion, squeeze-excite) per inverted-residual block; strides bring it to 1/8
    blocks: tuple = ((24, 2, 4, False), (24, 1, 3, False), (40, 2, 3, True), (40, 1, 3, True), (64, 1, 4, True),
                     (64, 1, 4, True))
    max_side: int = 512  # the scorer sees the image with its long side at most this (cost is then bounded)

    def to_json(self) -> dict:
        return {"stem": self.stem, "blocks": [list(b) for b in self.blocks], "max_side": self.max_side}

    @classmethod
    def from_json(cls, d: dict) -> "ScorerConfig":
        return cls(stem=int(d["stem"]), blocks=tuple(tuple(b) for b in d["blocks"]), max_side=int(d["max_side"]))


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, max(8, c // 4), 1)
        self.expand = nn.Conv2d(max(8, c // 4), c, 1)

    def forward(self, x):
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(s))


class _InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> squeeze-excite -> 1x1 project, hard-swish, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, se: bool):
        super().__init__()
        mid = c_in * expand
        self.expand = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                       nn.Hardswish())
        self.se = _SqueezeExcite(mid) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class LearnedScorer(nn.Module):
    """Image (N, 3, H, W) in 0..1 -> importance logits at 1/8 resolution (N, 1, H/8, W/8); `score` gives the map
    in 0..1 at the image size. Trained to predict where a uniform refinement changes the draft most."""

    def __init__(self, config: ScorerConfig = ScorerConfig()):
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(nn.Conv2d(3, config.stem, 3, 2, 1, bias=False), nn.BatchNorm2d(config.stem),
                                  nn.Hardswish())
        layers, c = [], config.stem
        for c_out, stride, expand, se in config.blocks:
            layers.append(_InvertedResidual(c, c_out, stride, expand, se))
            c = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem((image - self.mean) / self.std)))

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in 0..1 -> (N, 1, H, W) in 0..1, normalised per image like the analytic scorer."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"'image' must be RGB (N,3,H,W), got shape {tuple(image.shape)}")
        check_finite("image", image)
        h, w = image.shape[-2:]
        x = image.float()
        scale = min(1.0, self.config.max_side / max(h, w))
        size = (max(8, round(h * scale / 8) * 8), max(8, round(w * scale / 8) * 8))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        p = next(self.parameters())
        m = torch.sigmoid(self(x.to(device=p.device, dtype=p.dtype)).float().to(x.device))
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        return _normalise_per_image(m, SCORE_FLOOR).to(image.dtype)


def scorer_params(model: LearnedScorer) -> int:
    return sum(p.numel() for p in model.parameters())


def save_scorer(model: LearnedScorer, path, extra: dict | None = None) -> None:
    from .checkpoints import save_safetensors

    save_safetensors(path, model.state_dict(), {"format": SCORER_FORMAT, "config": model.config.to_json(),
                                                **(extra or {})})


@ck.user_file_loader("importance scorer", (".safetensors",))
def load_scorer(path) -> LearnedScorer:
    """Strict keys and shapes; the architecture comes from the file's metadata."""
    import json as _json
    from pathlib import Path

    name = Path(path).name
    tensors, meta = ck.load_safetensors(path)
    if meta.get("format") != SCORER_FORMAT or "config" not in meta:
        raise ck.CheckpointError(f"{name}: not a DiffuGAN importance scorer (metadata format "
                                 f"{meta.get('format')!r}, expected {SCORER_FORMAT!r})")
    try:
        config = ScorerConfig.from_json(_json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ck.CheckpointError(f"{name}: bad scorer config in the metadata ({e})") from None
    tensors = {k: v.float() for k, v in tensors.items()}
    model = ck.build_checked(lambda: LearnedScorer(config), tensors, name, config.to_json())
    return model.eval().requires_grad_(False)
