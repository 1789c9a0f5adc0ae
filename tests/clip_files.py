"""Writes small open_clip checkpoints the way open_clip and the HuggingFace hub lay them out, for tests.

A hub folder holds `open_clip_pytorch_model.bin` (a `torch.save`d state dict) and `open_clip_config.json`
({"model_cfg": …, "preprocess_cfg": …}). The model here is a real open_clip CLIP, only tiny and untrained.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
              "resize_mode": "shortest"}


def make_clip(cfg: dict = TINY, seed: int = 0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**cfg).eval()


def write_hub_folder(folder: Path, cfg: dict = TINY, seed: int = 0) -> Path:
    """A folder as downloaded from the hub; returns the weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    model = make_clip(cfg, seed)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": PREPROCESS}))
    return folder / "open_clip_pytorch_model.bin"
