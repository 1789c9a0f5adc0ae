"""Pictures drawn in code for tests and the demo: no data set needed."""
from __future__ import annotations

from pathlib import Path

import torch

from diffugan.models import region


def smiley(size: int = 128, mouth: str = "smile") -> torch.Tensor:
    """An emoji-like smiley (yellow disc, eyes, mouth, on white): (1, 3, size, size) in [-1, 1]. mouth: "smile"
    (an arc) or "open" (a round open mouth, for a structure that differs from the smile)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.ones(3, size, size)
    img[:, (xx ** 2 + yy ** 2) < 0.8 ** 2] = torch.tensor([1.0, 0.8, 0.2])[:, None]
    for ex in (-0.3, 0.3):
        img[:, ((xx - ex) ** 2 + (yy + 0.25) ** 2) < 0.1 ** 2] = 0.25
    if mouth == "smile":
        r2 = xx ** 2 + (yy - 0.1) ** 2
        img[:, (r2 < 0.45 ** 2) & (r2 > 0.35 ** 2) & (yy > 0.2)] = 0.25
    else:
        img[:, (xx ** 2 + (yy - 0.35) ** 2) < 0.18 ** 2] = 0.25
    return img[None] * 2 - 1


def write_png(x: torch.Tensor, path: Path) -> None:
    """(1, 3, H, W) in [0, 1] -> PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb8(x)).save(path)


def _rgb8(x: torch.Tensor):
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 numpy."""
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def write_coarse_smiley(path: Path, size: int = 128, coarse: int = 24) -> None:
    """The smiley made coarse (down to `coarse` px and back up): a blurry draft, as a fast generator gives."""
    x = smiley(size) * 0.5 + 0.5
    write_png(region.coarse(x, coarse), path)


def write_sketch(path: Path, size: int = 128) -> None:
    """A sharp smiley with an open mouth: a structure for the ControlNet that the coarse draft does not have."""
    write_png(smiley(size, mouth="open") * 0.5 + 0.5, path)


def heart(size: int = 128) -> torch.Tensor:
    """A red heart on white (two discs over a triangle): (1, 3, size, size) in [0, 1]. A style reference image."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = (((xx + 0.33) ** 2 + (yy + 0.25) ** 2) < 0.4 ** 2) | (((xx - 0.33) ** 2 + (yy + 0.25) ** 2) < 0.4 ** 2)
    inside |= (yy > -0.2) & (yy < 0.8 - xx.abs() * 1.05) & (xx.abs() < 0.72)
    img = torch.ones(3, size, size)
    img[:, inside] = torch.tensor([0.87, 0.14, 0.2])[:, None]
    return img[None]


def write_painted(x: torch.Tensor, painted: torch.Tensor, path: Path) -> None:
    """(1, 3, H, W) in [0, 1] with a painted region (H, W) bool, stored as the stock mask editor stores paint:
    alpha 0 where painted (the stock LoadImage's MASK is 1 - alpha)."""
    import numpy as np
    from PIL import Image

    rgb = _rgb8(x)
    alpha = ((~painted).byte() * 255).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)


def write_painted_draft(path: Path, size: int = 128, coarse: int = 24) -> None:
    """The coarse smiley with its forehead painted as emphasis (a user's brush stroke over a plain region that the
    image statistics alone would leave to the fewest steps)."""
    x = region.coarse(smiley(size) * 0.5 + 0.5, coarse)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    write_painted(x, ((yy + 0.58).abs() < 0.12) & (xx.abs() < 0.4), path)
