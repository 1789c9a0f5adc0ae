"""Small helpers shared by the node adapters: type conversion and people-facing errors."""
from __future__ import annotations

import contextlib

import torch


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B,H,W,C) -> (B,C,H,W), alpha dropped."""
    return image[..., :3].movedim(-1, 1)


def nchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> ComfyUI IMAGE (B,H,W,C), float32 on the intermediate (CPU) side."""
    return x.movedim(1, -1).float().contiguous()


def mask_to_n1hw(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK ([B,]H,W) -> (B,1,H,W)."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    return mask.unsqueeze(1)


@contextlib.contextmanager
def node_errors(display_name: str):
    """Re-raise a model-side ValueError with the node's name in front, so the user knows where to look."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{display_name}: {e}") from None
