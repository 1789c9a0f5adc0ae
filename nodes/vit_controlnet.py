"""ViT ControlNet nodes (category DiffuGAN/ControlNet): loader, Apply (MODEL -> MODEL) and an edge preprocessor.

Apply patches a DiT MODEL: the ControlNet's residuals are added inside the DiT's forward pass for every sampler
that calls it (stock KSampler, SamplerCustomAdvanced, our region-adaptive sampler). Several Apply nodes stack.
Custom type: DIFFUGAN_CONTROLNET (a ViT ControlNet in ComfyUI's model management).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..models import dit as dit_model
from ..models import vit_controlnet as vc
from ._common import (image_to_nchw, mask_to_n1hw, missing_model_message, model_file_or_error, nchw_to_image,
                      node_errors, register_model_folder)

FOLDER = "diffugan_controlnet"
register_model_folder(FOLDER, {".safetensors"})
CONTROL_KEY = "diffugan_control"  # transformer_options entry: list of ControlSpec

ControlNetType = io.Custom("DIFFUGAN_CONTROLNET")


@dataclass
class ControlSpec:
    """One applied ControlNet, carried in the patched MODEL's transformer_options."""

    patcher: comfy.model_patcher.ModelPatcher
    hint: torch.Tensor  # (B, C, H, W) in 0..1
    importance: torch.Tensor | None  # (B, 1, H, W) in 0..1
    settings: vc.ControlSettings
    reuse: vc.ResidualReuse | vc.RotatingBudget | None = None  # state across steps (None: every step afresh)
    _prepared: dict = field(default_factory=dict)

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options; share the spec (its inputs are
        # fixed, and its step state starts afresh with every sampling run)
        return self

    def inputs(self, grid, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hint at the token grid and per-token importance for the whole batch, prepared once per grid."""
        key = (grid, str(device), dtype)
        if key not in self._prepared:
            net = self.patcher.model
            hint = net.prepare_hint(self.hint.to(device), grid).to(dtype)
            imp = None
            if self.importance is not None:
                imp = F.interpolate(self.importance.float().to(device), size=grid, mode="area").flatten(1)
            self._prepared = {key: (hint, imp)}
        return self._prepared[key]


def _sum_residuals(a: list, b: list) -> list:
    """Residuals of two ControlNets, possibly of different depths, added layer by layer."""
    if len(a) < len(b):
        a, b = b, a
    return [x + y for x, y in zip(a, b)] + a[len(b):]


def control_hook(transformer_options: dict, images: list[int]) -> dit_model.Control | None:
    """The DiT's control hook for rows showing `images` (image index per row, so CFG's cond and uncond rows of an
    image get the same control image), summing every applied ControlNet; None when none is applied."""
    specs = transformer_options.get(CONTROL_KEY) or []
    if not specs:
        return None

    def hook(tokens, c, grid):
        total = None
        for spec in specs:
            net = spec.patcher.model
            dtype = next(net.parameters()).dtype
            hint, imp = spec.inputs(grid, tokens.device, dtype)
            rows = torch.tensor([i % hint.shape[0] for i in images], device=tokens.device)
            imp_rows = None if imp is None else imp[torch.tensor([i % imp.shape[0] for i in images],
                                                                 device=tokens.device)]

            def compute(only=None):
                return net.residuals(tokens.to(dtype), c.to(dtype), hint[rows], grid, spec.settings, imp_rows, only)

            schedule = transformer_options.get("sample_sigmas")
            if spec.reuse is None or schedule is None or "sigmas" not in transformer_options:
                res = compute()
            else:  # per row set (which images, cond/uncond, shapes), at the sampler step of this noise level
                key = (tuple(images), tuple(transformer_options.get("cond_or_uncond", ())), tuple(tokens.shape))
                step = dit_model.step_index(schedule, float(transformer_options["sigmas"].max()))
                if isinstance(spec.reuse, vc.RotatingBudget):
                    priority = net.per_token(hint[rows], spec.settings, imp_rows)[0]
                    res = spec.reuse(key, step, priority, grid, compute)
                else:
                    res = spec.reuse(key, step, compute)
            if res is None:
                continue
            res = [r.to(tokens.dtype) for r in res]
            total = res if total is None else _sum_residuals(total, res)
        return total

    return hook


class ControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANControlNetLoader",
            display_name="DiffuGAN ViT ControlNet Loader",
            category="DiffuGAN/ControlNet",
            description=("Loads a DiffuGAN ViT ControlNet (.safetensors in DiffuGAN's ControlNet format) from "
                         "models/diffugan_controlnet. It belongs to one DiT: applying it to another is refused."),
            inputs=[io.Combo.Input("controlnet_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in ComfyUI/models/diffugan_controlnet")],
            outputs=[ControlNetType.Output(display_name="controlnet")],
        )

    @classmethod
    def validate_inputs(cls, controlnet_name) -> bool | str:
        return missing_model_message(FOLDER, controlnet_name, "ViT ControlNet")

    @classmethod
    def execute(cls, controlnet_name) -> io.NodeOutput:
        name = "DiffuGAN ViT ControlNet Loader"
        path = model_file_or_error(FOLDER, controlnet_name, name, "ViT ControlNet")
        with node_errors(name):
            net = vc.load_controlnet(path)
        return io.NodeOutput(comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                                              offload_device=mm.unet_offload_device()))


class ControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANControlNetApply",
            display_name="DiffuGAN ViT ControlNet Apply",
            category="DiffuGAN/ControlNet",
            description=("Adds structure control (e.g. edges from the stock Canny node or DiffuGAN Edges) to a DiT "
                         "MODEL. The control branch processes `budget` x the DiT's tokens, spent where importance "
                         "(or edge density) is highest, so it costs less where less matters. A plain ControlNet "
                         "skips the other tokens; a mixed-resolution one (the zoo's) merges them 2x2, so from a "
                         "budget of 0.25 up every region is still controlled. Strength 0 leaves the model "
                         "unchanged; budget 1 is the dense ControlNet."),
            inputs=[
                io.Model.Input("model", tooltip="A DiT MODEL from DiffuGAN DiT Loader."),
                ControlNetType.Input("controlnet"),
                io.Image.Input("image", tooltip="Control image (edge map); any size, resized to the latent grid."),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05),
                io.Float.Input("budget", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Tokens the control branch processes, as a fraction of the DiT's "
                                       "(cost falls with it). 0.25 is about 3x cheaper than 1."),
                io.Mask.Input("importance", optional=True,
                              tooltip="Importance MASK (DiffuGAN Importance): chooses the tokens within the budget."),
                io.Float.Input("importance_modulation", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0: same strength everywhere; 1: strength x importance per token."),
                io.Float.Input("edge_priority", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Mix edge density of the control image into which tokens get the budget."),
                io.Float.Input("edge_gain", default=0.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Extra strength where edges are dense: x (1 + gain x edge density)."),
                io.Int.Input("reuse_steps", default=1, min=1, max=16, optional=True,
                             tooltip="Compute the control branch at every n-th sampler step and reuse its "
                                     "residuals in between: it costs 1/n on average. 1: every step."),
                io.Boolean.Input("budget_over_steps", default=False, optional=True,
                                 tooltip="Spend the budget over steps: each step processes budget x tokens, a "
                                         "different interleaved group spanning the whole image, so every token is "
                                         "refreshed every 1 / budget steps; the others keep their last residuals. "
                                         "The first step processes all. At 0.25 about 3x cheaper over a run, and "
                                         "the edges followed almost as well as every step dense."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, controlnet, image, strength, budget, importance_modulation, edge_priority, edge_gain,
                importance=None, reuse_steps=1, budget_over_steps=False) -> io.NodeOutput:
        name = "DiffuGAN ViT ControlNet Apply"
        diffusion = getattr(model.model, "diffusion_model", None)
        dit = getattr(diffusion, "dit", None)
        if not isinstance(dit, dit_model.DiT):
            raise ValueError(f"{name}: 'model' is not a DiffuGAN DiT (load it with DiffuGAN DiT Loader); a ViT "
                             "ControlNet only fits the DiT it was trained for")
        with node_errors(name):
            controlnet.model.check_fits(dit)
            if not torch.isfinite(image).all():
                raise ValueError("'image' contains NaN or infinite values")
            hint = image_to_nchw(image).float().clamp(0, 1)
            mask = None
            if importance is not None:
                mask = mask_to_n1hw(importance).float()
                if not torch.isfinite(mask).all():
                    raise ValueError("'importance' contains NaN or infinite values")
                mask = mask.clamp(0, 1)
            if budget_over_steps and reuse_steps != 1:
                raise ValueError("'reuse_steps' and 'budget_over_steps' are two ways to spend the ControlNet over "
                                 "steps; set reuse_steps to 1 or budget_over_steps to false")
            reuse = (vc.RotatingBudget(budget) if budget_over_steps and budget < 1 else
                     vc.ResidualReuse(int(reuse_steps)) if reuse_steps != 1 else None)
        settings = vc.ControlSettings(strength, budget, importance_modulation, edge_priority, edge_gain)
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        spec = ControlSpec(controlnet, hint, mask, settings, reuse)
        options[CONTROL_KEY] = list(options.get(CONTROL_KEY, [])) + [spec]
        extra = patched.get_additional_models_with_key(CONTROL_KEY)
        patched.set_additional_models(CONTROL_KEY, list(extra) + [controlnet])
        return io.NodeOutput(patched)


class Edges(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANEdges",
            display_name="DiffuGAN Edges",
            category="DiffuGAN/ControlNet",
            description=("Canny edge map (kornia) of an image as a white-on-black IMAGE for the ViT ControlNet; "
                         "lower thresholds keep more, weaker edges."),
            inputs=[
                io.Image.Input("image"),
                io.Float.Input("low_threshold", default=0.1, min=0.0, max=1.0, step=0.01),
                io.Float.Input("high_threshold", default=0.2, min=0.0, max=1.0, step=0.01),
            ],
            outputs=[io.Image.Output(display_name="edges")],
        )

    @classmethod
    def execute(cls, image, low_threshold, high_threshold) -> io.NodeOutput:
        with node_errors("DiffuGAN Edges"):
            edges = vc.canny_edges(image_to_nchw(image).float(), low_threshold, high_threshold)
        return io.NodeOutput(nchw_to_image(edges.expand(-1, 3, -1, -1)))


NODES = [ControlNetLoader, ControlNetApply, Edges]
