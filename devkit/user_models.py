"""A small checkpoint in the Stable Diffusion 1.x single-file layout (model.diffusion_model.*, cond_stage_model.*,
first_stage_model.*), random weights, for tests of the stock SD1.5 path (CheckpointLoaderSimple, CLIPTextEncode,
VAEEncode, DifferentialDiffusion, KSampler) on a real server. The text encoder and the VAE have SD1's own shapes
(ComfyUI builds them from fixed configs); the UNet has SD1.5's widths (320 channels, 768-d context: what ComfyUI's
detection matches SD15 on) but one resolution level and one block, so the file stays near 420 MB in fp16 and a step
is cheap on a CPU. Built with ComfyUI's own layer classes (the pinned ComfyUI, put on sys.path here, on the CPU)."""
from __future__ import annotations

from pathlib import Path

import torch


def _filled(module: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """ComfyUI's layers skip initialisation: give every tensor small random values (norm weights 1, biases 0)."""
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("position_ids"):
            out[name] = t
        elif t.ndim == 1 and ("norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")):
            out[name] = torch.ones_like(t) if name.endswith("weight") else torch.zeros_like(t)
        elif name.endswith("bias"):
            out[name] = torch.zeros_like(t)
        else:
            fan_in = max(1, t[0].numel()) if t.ndim > 1 else t.numel()
            out[name] = torch.randn(t.shape, generator=gen) / fan_in ** 0.5
    return out


def write_tiny_sd1_checkpoint(path: Path, seed: int = 0) -> Path:
    import sys

    from devkit.harness import require_comfyui

    if str(require_comfyui()) not in sys.path:
        sys.path.insert(0, str(require_comfyui()))
    if "comfy.model_management" not in sys.modules:  # this process is no ComfyUI server: keep it on the CPU
        from comfy.cli_args import args

        args.cpu = True
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    ops = comfy.ops.disable_weight_init
    unet = openaimodel.UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
        transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1, num_heads=8,
        num_head_channels=-1, context_dim=768, use_linear_in_transformer=False, adm_in_channels=None,
        use_spatial_transformer=True, legacy=False,
        operations=ops, dtype=torch.float32)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(
        ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                  "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
        embed_dim=4)
    sd = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip),
                           ("first_stage_model.", vae)):
        sd.update({prefix + k: v.half() if v.is_floating_point() else v for k, v in _filled(module, gen).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# Example workflows that need a model file of the user's own (not shipped, not downloadable here): workflow ->
# (ComfyUI model folder, file name). The SD1.5 name is the one ComfyUI's own default workflow uses.
SD15_FILE = "v1-5-pruned-emaonly-fp16.safetensors"
USER_MODELS = {"stylegan_draft_sd15_refine": ("checkpoints", SD15_FILE)}
