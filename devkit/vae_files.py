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
    state = TAESD().state_dict()
    # ComfyUI's ops skip weight initialisation (its loaders fill every tensor): the fresh tensors hold whatever the
    # memory held, NaN included. Initialise them as PyTorch would, so the file gives finite latents.
    for k, v in state.items():
        if v.ndim > 1:
            torch.nn.init.kaiming_uniform_(v, a=5 ** 0.5)
        elif v.ndim == 1:
            v.zero_()  # biases; the 0-d vae_scale / vae_shift keep their 1 and 0
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
