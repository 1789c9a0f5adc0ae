"""DiT refiner nodes (category DiffuGAN/DiT): a facebookresearch DiT as a stock ComfyUI MODEL, and its conditioning.

The MODEL speaks SD1 latents (4 channels, scale 0.18215: DiT's VAE is the SD VAE) and DiT's discrete schedule
(linear β 1e-4…0.02, 1000 steps), predicting ε. DiT's learned-variance channels are dropped: ComfyUI's samplers
(Euler, DPM++, DDIM, …) use ε only. Stock KSampler, SamplerCustomAdvanced, DifferentialDiffusion and
SetLatentNoiseMask work with it unchanged.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base
import folder_paths

from ..models import dit as dit_model
from ._common import missing_model_message, model_file_or_error, node_errors, register_model_folder

FOLDER = "dit"
register_model_folder(FOLDER, {".pt", ".pth", ".safetensors"})
NULL_LABEL = -1  # in conditioning: "the model's null class" (classifier-free guidance's unconditional side)


class DiTModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": dit_model.BETA_START,
                         "linear_end": dit_model.BETA_END, "timesteps": dit_model.NUM_TIMESTEPS}  # true linear β
    latent_format = comfy.latent_formats.SD15
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    memory_usage_factor = 1.0

    def __init__(self):
        super().__init__({"disable_unet_model_creation": True})  # BaseModel gets our DiT, not a UNet


class DiTDiffusionModel(torch.nn.Module):
    """What BaseModel calls: (x, timesteps, context, y=labels, style=...) -> ε with the latent's channels."""

    def __init__(self, dit: dit_model.DiT):
        super().__init__()
        self.dit = dit

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.x_embedder.proj.weight.dtype

    def forward(self, x, timesteps, context=None, y=None, style=None, control=None, transformer_options={}, **kw):
        out = self.dit(x, timesteps, y, style)
        return out[:, : self.dit.config.in_channels]  # ε; the learned-variance half is not used by these samplers


class DiTModel(comfy.model_base.BaseModel):
    def __init__(self, dit: dit_model.DiT, device=None):
        super().__init__(DiTModelConfig(), comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = DiTDiffusionModel(dit)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        config = self.diffusion_model.dit.config
        label = kwargs.get("dit_label", NULL_LABEL)
        if label == NULL_LABEL:
            label = config.null_class
        elif not 0 <= label < config.num_classes:
            raise ValueError(f"DiT class label {label} is out of range: this model has {config.num_classes} classes "
                             f"(0..{config.num_classes - 1})")
        out["y"] = comfy.conds.CONDRegular(torch.tensor([label], dtype=torch.long))
        style = kwargs.get("dit_style")
        if style is not None:
            out["style"] = comfy.conds.CONDRegular(style)
        return out


def dit_to_comfy_model(dit: dit_model.DiT) -> comfy.model_patcher.ModelPatcher:
    load_device = mm.get_torch_device()
    params = sum(p.numel() for p in dit.parameters())
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=DiTModelConfig.supported_inference_dtypes)
    model = DiTModel(dit.to(dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


class DiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDiTLoader",
            display_name="DiffuGAN DiT Loader",
            category="DiffuGAN/DiT",
            description=("Loads a DiT (facebookresearch .pt such as DiT-XL-2-256x256.pt, a train.py checkpoint's EMA "
                         "weights, or a DiffuGAN .safetensors) from models/dit as a stock MODEL on SD1 latents. "
                         "Pair it with the SD VAE (sd-vae-ft-ema/mse) in VAELoader."),
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="A file in ComfyUI/models/dit"),
                io.Int.Input("num_heads", default=0, min=0, max=64,
                             tooltip="0 = from the file name / standard size. The head count is not stored in the "
                                     "weights; a wrong one loads without complaint but gives wrong images."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, num_heads) -> bool | str:
        return missing_model_message(FOLDER, ckpt_name, "DiT checkpoint")

    @classmethod
    def execute(cls, ckpt_name, num_heads) -> io.NodeOutput:
        name = "DiffuGAN DiT Loader"
        path = model_file_or_error(FOLDER, ckpt_name, name, "DiT checkpoint")
        with node_errors(name):
            dit = dit_model.load_dit(path, num_heads=num_heads or None)
        return io.NodeOutput(dit_to_comfy_model(dit))


def _conditioning(label: int) -> list:
    # The cross-attention tensor is unused by DiT but part of every CONDITIONING entry.
    return [[torch.zeros(1, 1, 1), {"dit_label": label}]]


class DiTConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDiTConditioning",
            display_name="DiffuGAN DiT Conditioning",
            category="DiffuGAN/DiT",
            description=("Class conditioning for a DiT as stock CONDITIONING: positive = the class (ImageNet index for "
                         "the released models, e.g. 207 golden retriever), negative = the null class for "
                         "classifier-free guidance. class_label -1 makes both unconditional."),
            inputs=[io.Int.Input("class_label", default=0, min=-1, max=100000)],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, class_label) -> io.NodeOutput:
        return io.NodeOutput(_conditioning(class_label), _conditioning(NULL_LABEL))


NODES = [DiTLoader, DiTConditioning]
