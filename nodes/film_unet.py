"""FiLM UNet nodes: the latent diffusion UNet of design note 004 as a stock MODEL (any ComfyUI sampler, DDIM
included, DifferentialDiffusion, SetLatentNoiseMask) and its style conditioning as stock CONDITIONING."""
from __future__ import annotations

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base
import folder_paths
import torch
from comfy_api.latest import io

from ..models import film_unet as fu
from ._common import StyleType, check_style, load_model_file, missing_model_message, register_model_folder

FOLDER = "film_unet"
register_model_folder(FOLDER, {".safetensors"})


class FiLMUNetModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    # Stable Diffusion 1's schedule (ComfyUI's defaults for an EPS model): models/film_unet.sd1_alphas_cumprod
    sampling_settings = {"beta_schedule": "linear", "linear_start": fu.SD1_BETA_START, "linear_end": fu.SD1_BETA_END,
                         "timesteps": fu.NUM_TIMESTEPS}
    latent_format = comfy.latent_formats.SD15
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    memory_usage_factor = 1.0

    def __init__(self):
        super().__init__({"disable_unet_model_creation": True})


class FiLMUNetDiffusionModel(torch.nn.Module):
    """What BaseModel calls: (x, timesteps, context, style=...) -> ε. Runs the DIFFUSION_MODEL wrappers of the call
    (EasyCache's and other patches') around the network, as ComfyUI's own diffusion models do."""

    def __init__(self, unet: fu.FiLMUNet):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def forward(self, x, timesteps, context=None, style=None, transformer_options={}, **kw):
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                           transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, style, transformer_options)

    def _forward(self, x, timesteps, style, transformer_options):
        return self.unet(x, timesteps, style).to(x.dtype)


class FiLMUNetModel(comfy.model_base.BaseModel):
    def __init__(self, unet: fu.FiLMUNet, device=None):
        super().__init__(FiLMUNetModelConfig(), comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = FiLMUNetDiffusionModel(unet)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        if "film_style" not in kwargs:
            raise ValueError("a DiffuGAN FiLM UNet needs its conditioning from 'DiffuGAN FiLM UNet Conditioning'; this "
                             "conditioning came from another node (e.g. CLIPTextEncode), which it cannot read")
        unet = self.diffusion_model.unet
        style = kwargs["film_style"]
        given = bool(style.abs().sum() > 0)  # a zero vector: no style (the negative side, or no style connected)
        if unet.config.style_dim == 0:
            if given:
                raise ValueError("this FiLM UNet was trained without style conditioning: disconnect 'style' from "
                                 "'DiffuGAN FiLM UNet Conditioning'")
            return out
        if not given:
            style = torch.zeros(1, unet.config.style_dim)
        elif style.shape[-1] != unet.config.style_dim:
            raise ValueError(f"the style embedding has {style.shape[-1]} dimensions but this FiLM UNet expects "
                             f"{unet.config.style_dim}: encode the style with the CLIP it was trained with")
        trained_on, used = unet.style_clip, kwargs.get("film_style_clip", "")
        if given and trained_on and used:
            check_style(used, trained_on, "this FiLM UNet was trained on the embeddings of")
        out["style"] = comfy.conds.CONDRegular(style)
        return out


def film_unet_to_comfy_model(unet: fu.FiLMUNet) -> comfy.model_patcher.ModelPatcher:
    params = sum(p.numel() for p in unet.parameters())
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=FiLMUNetModelConfig.supported_inference_dtypes)
    return comfy.model_patcher.ModelPatcher(FiLMUNetModel(unet.to(dtype)), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class FiLMUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANFiLMUNetLoader",
            display_name="DiffuGAN FiLM UNet Loader",
            category="DiffuGAN/FiLM UNet",
            description=("Loads a DiffuGAN FiLM UNet (a latent diffusion UNet whose every residual block is scaled and "
                         "shifted by the style: FiLM) from models/film_unet as a stock MODEL on SD1 latents, with "
                         "Stable Diffusion 1's noise schedule: sample it with any stock sampler (KSampler with ddim, "
                         "euler, dpmpp_2m, ...), refine with SetLatentNoiseMask / DifferentialDiffusion."),
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in ComfyUI/models/film_unet")],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        return missing_model_message(FOLDER, ckpt_name, "FiLM UNet")

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        unet = load_model_file(FOLDER, ckpt_name, "DiffuGAN FiLM UNet Loader", "FiLM UNet", fu.load_film_unet)
        return io.NodeOutput(film_unet_to_comfy_model(unet))


def _conditioning(style=None, weight: float = 1.0) -> list:
    """One CONDITIONING entry: the style embedding (zeros = no style, which the UNet replaces by its null
    embedding). Both sides carry a tensor of the same shape, so ComfyUI batches positive and negative together."""
    if style is None:
        extra = {"film_style": torch.zeros(1, 1)}
    else:
        extra = {"film_style": style.embedding.float().view(1, -1) * weight, "film_style_clip": style.clip}
    return [[torch.zeros(1, 1, 1), extra]]


class FiLMUNetConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANFiLMUNetConditioning",
            display_name="DiffuGAN FiLM UNet Conditioning",
            category="DiffuGAN/FiLM UNet",
            description=("Style conditioning for a FiLM UNet as stock CONDITIONING: positive = the style (DiffuGAN "
                         "Style Encode, with the CLIP the UNet was trained with), negative = no style, so the "
                         "sampler's CFG pushes toward the style. Without a style both sides are unconditional."),
            inputs=[StyleType.Input("style", optional=True,
                                    tooltip="The prompt or reference images, encoded by DiffuGAN Style Encode.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, style=None) -> io.NodeOutput:
        return io.NodeOutput(_conditioning(style), _conditioning(style, weight=0.0))


NODES = [FiLMUNetLoader, FiLMUNetConditioning]
