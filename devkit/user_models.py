"""Example workflows that need model files of the user's own — public checkpoints too large to ship, which
`scripts/download_models.py` fetches — and small random-weight stand-ins in the same formats under the same names,
with which the tests and the thumbnail script run those workflows (`USER_MODELS`).

- A Stable Diffusion 1.x single-file checkpoint (model.diffusion_model.*, cond_stage_model.*, first_stage_model.*)
  for the stock SD1.5 path (CheckpointLoaderSimple, CLIPTextEncode, VAEEncode, DifferentialDiffusion, KSampler). The
  text encoder and the VAE have SD1's own shapes (ComfyUI builds them from fixed configs); the UNet has SD1.5's
  widths (320 channels, 768-d context: what ComfyUI's detection matches SD15 on) but one resolution level and one
  block, so the file stays near 420 MB in fp16 and a step is cheap on a CPU. Built with ComfyUI's own layer classes
  (the pinned ComfyUI, put on sys.path here, on the CPU). Its VAE alone is the stand-in for the SD VAE files.
- FoundationVision's VAR tokenizer and transformer (state dicts, their parameter names; the real scales, so the
  pair works at 256 px, but narrow and one block deep) and facebookresearch's DiT-XL/2 (a one-block DiT-S-wide
  state dict: the loader reads the architecture off the weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def _comfy_sd1_parts(seed: int):
    """(unet, text encoder, VAE) in SD1's layout from ComfyUI's own classes, and a generator for their weights."""
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
    return unet, clip, vae, torch.Generator().manual_seed(seed)


def write_tiny_sd1_checkpoint(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    unet, clip, vae, gen = _comfy_sd1_parts(seed)
    sd = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip),
                           ("first_stage_model.", vae)):
        sd.update({prefix + k: v.half() if v.is_floating_point() else v for k, v in _filled(module, gen).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_tiny_sd_vae(path: Path, seed: int = 0) -> Path:
    """An SD VAE file (the LDM layout of sd-vae-ft-ema / -mse), random weights: the VAE of the SD1 stand-in."""
    from safetensors.torch import save_file

    _, _, vae, gen = _comfy_sd1_parts(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in _filled(vae, gen).items()}, str(path))
    return path


def write_var_tokenizer(path: Path) -> Path:
    """FoundationVision's VQVAE layout at 256 px (16 × 16 features), 32 channels wide, 256 codes of width 32."""
    from diffugan.models import var

    torch.manual_seed(0)
    return _save_state(var.VQVAE(var.VQVAEConfig(vocab_size=256, z_channels=32, ch=32)), path)


def write_var_transformer(path: Path) -> Path:
    """A VAR transformer on the real scales (1 … 16), 1000 classes, one block 64 wide, for the tokenizer above."""
    from diffugan.models import var

    torch.manual_seed(1)
    return _save_state(var.VAR(var.VARConfig(depth=1, embed_dim=64, num_heads=1, vocab_size=256, z_channels=32)),
                       path)


def write_dit(path: Path) -> Path:
    """A facebookresearch DiT state dict for 256 px (32 × 32 latents, patch 2, 1000 classes + null, learned σ),
    DiT-S's width, one block."""
    from diffugan.models import dit

    torch.manual_seed(2)
    return _save_state(dit.DiT(dit.DiTConfig(depth=1, hidden_size=384, num_heads=6, input_size=32)), path)


def _save_state(model: torch.nn.Module, path: Path) -> Path:
    """torch.save of the state dict, every parameter given small random values (zero-initialised layers too)."""
    from devkit.random_weights import perturb

    perturb(model, 0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@dataclass(frozen=True)
class StandIn:
    folder: str  # ComfyUI model folder
    file: str  # the name the workflow uses
    write: Callable[[Path], Path]


@dataclass(frozen=True)
class UserWorkflow:
    models: list[StandIn]
    # what the template browser's thumbnail says instead of showing a stand-in's pictures (None: show the run's
    # pictures but the last, the stand-in's own output)
    card: str | None = None

    def write_stand_ins(self, models_dir: Path) -> list[Path]:
        return [m.write(Path(models_dir) / m.folder / m.file) for m in self.models]


# The SD1.5 name is the one ComfyUI's own default workflow uses; the others are the published files' names.
SD15_FILE = "v1-5-pruned-emaonly-fp16.safetensors"
USER_MODELS = {
    "stylegan_draft_sd15_refine": UserWorkflow([StandIn("checkpoints", SD15_FILE, write_tiny_sd1_checkpoint)]),
    "var_draft_dit_refine_imagenet": UserWorkflow(
        [StandIn("var", "vae_ch160v4096z32.pth", write_var_tokenizer),
         StandIn("var", "var_d16.pth", write_var_transformer),
         StandIn("dit", "DiT-XL-2-256x256.pt", write_dit),
         StandIn("vae", "vae-ft-ema-560000-ema-pruned.safetensors", write_tiny_sd_vae)],
        card="VAR-d16 draft (class 207)\nrefined by DiT-XL/2\n\nneeds the published weights:\n"
             "python scripts/download_models.py\n  var-vqvae var-d16\n  dit-xl-2-256 sd-vae-ft-ema"),
}
