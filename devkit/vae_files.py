"""Writes a small random VAE that ComfyUI's stock VAELoader accepts as an SD1-latent VAE (the TAESD layout: ComfyUI
detects it from its `taesd_encoder.*` / `taesd_decoder.*` keys), so workflows with VAEEncode/VAEDecode run in tests
and in the demo without the real SD VAE. Random weights: it shows the wiring, not pictures."""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def write_random_taesd_vae(path: Path, seed: int = 0) -> None:
    from .harness import require_comfyui

    comfy_dir = str(require_comfyui())
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from safetensors.torch import save_file

    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True  # comfy.model_management (imported by comfy.ops) would otherwise look for a GPU
    from comfy.taesd.taesd import TAESD  # ComfyUI's own module, so the keys are exactly what its loader expects

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in TAESD().state_dict().items()}, str(path))
