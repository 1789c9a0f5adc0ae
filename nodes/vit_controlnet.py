"""ViT ControlNet nodes (category DiffuGAN/ControlNet): loader, Apply (MODEL -> MODEL) and an edge preprocessor.

Apply patches a clone of a DiT MODEL through ComfyUI's model patches: a control patch in the DiT's control slot
(ModelPatcher.set_model_patch; the DiT adds its residuals after its first blocks for every sampler that calls it:
stock KSampler, SamplerCustomAdvanced, the region-adaptive sampler) and, for budgets spent over steps, an
OUTER_SAMPLE wrapper that gives the patch its step state for one sampling run. Several Apply nodes stack.
Custom type: DIFFUGAN_CONTROLNET (a ViT ControlNet in ComfyUI's model management).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import comfy.model_patcher
import comfy.patcher_extension
import folder_paths
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..models import dit as dit_model
from ..models import region
from ..models import vit_controlnet as vc
from ._common import (
    image_to_nchw,
    load_model_file,
    managed,
    mask_to_n1hw,
    missing_model_message,
    nchw_to_image,
    node_errors,
    register_model_folder,
)
from .dit import CONTROL_PATCH

FOLDER = "diffugan_controlnet"
register_model_folder(FOLDER, {".safetensors"})
WRAPPER_KEY = "diffugan_controlnet"

ControlNetType = io.Custom("DIFFUGAN_CONTROLNET")
TEMPORAL = ["every step", "reuse every n steps", "rotate budget over steps"]


@dataclass
class ControlPatch:
    """One applied ControlNet: a model patch in the DiT's control slot (nodes/dit.CONTROL_PATCH). Its inputs are
    fixed when Apply runs; its step state (`run`, for the temporal budgets) exists only while a sampling run does:
    the OUTER_SAMPLE wrapper Apply registers creates it when sampling starts and drops it when sampling ends."""

    patcher: comfy.model_patcher.ModelPatcher
    hint: torch.Tensor  # (B, C, H, W) in 0..1
    importance: torch.Tensor | None  # (B, 1, H, W) in 0..1
    settings: vc.ControlSettings
    new_run: Callable[[], vc.StepResiduals] | None = None  # a temporal budget's state for one run (None: none)
    run: vc.StepResiduals | None = None
    _prepared: dict = field(default_factory=dict)

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: share the patch (its inputs are
        # fixed; its run state is set and cleared by the sampling run around it)
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

    def __call__(self, tokens, c, grid, images: list[int], transformer_options: dict):
        """Residuals for rows showing `images` (image index per row: CFG's cond and uncond rows of an image get the
        same control image), or None."""
        net = self.patcher.model
        dtype = next(net.parameters()).dtype
        hint, imp = self.inputs(grid, tokens.device, dtype)
        rows = torch.tensor([i % hint.shape[0] for i in images], device=tokens.device)
        imp_rows = None if imp is None else imp[torch.tensor([i % imp.shape[0] for i in images], device=tokens.device)]

        def compute(only=None):
            return net.residuals(tokens.to(dtype), c.to(dtype), hint[rows], grid, self.settings, imp_rows, only)

        schedule = transformer_options.get("sample_sigmas")
        if self.run is None or schedule is None or "sigmas" not in transformer_options:
            res = compute()
        else:  # per row set (which images, cond/uncond, shapes), at the sampler step of this noise level
            key = (tuple(images), tuple(transformer_options.get("cond_or_uncond", ())), tuple(tokens.shape))
            step = region.step_index(schedule, float(transformer_options["sigmas"].max()))
            if isinstance(self.run, vc.RotatingBudget):
                priority = net.per_token(hint[rows], self.settings, imp_rows)[0]
                res = self.run(key, step, priority, grid, compute)
            else:
                res = self.run(key, step, compute)
        return None if res is None else [r.to(tokens.dtype) for r in res]


def _sampling_run(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: every ControlNet patch with a temporal budget gets fresh step state for this sampling
    run, dropped when it ends (also on error or interrupt), so nothing is held between prompts."""
    options = executor.class_obj.model_options.get("transformer_options", {})
    patches = [p for p in options.get("patches", {}).get(CONTROL_PATCH, []) if isinstance(p, ControlPatch)]
    for p in patches:
        p.run = p.new_run() if p.new_run is not None else None
    try:
        return executor(*args, **kwargs)
    finally:
        for p in patches:
            p.run = None


def apply_controlnet(model, controlnet, image, settings: vc.ControlSettings, importance=None,
                     new_run: Callable[[], vc.StepResiduals] | None = None,
                     name: str = "DiffuGAN ViT ControlNet Apply"):
    """A clone of the DiT MODEL with the ControlNet as a control patch (and its weights as an additional model)."""
    diffusion = getattr(model.model, "diffusion_model", None)
    dit = getattr(diffusion, "dit", None)
    if not isinstance(dit, dit_model.DiT):
        raise ValueError(f"{name}: 'model' is not a DiffuGAN DiT (load it with DiffuGAN DiT Loader); a ViT "
                         "ControlNet only fits the DiT it was trained for")
    with node_errors(name):
        controlnet.model.check_fits(dit)
        hint = image_to_nchw(image, "image").clamp(0, 1)
        mask = None if importance is None else mask_to_n1hw(importance, "importance").clamp(0, 1)
        if mask is not None and 1 not in (mask.shape[0], hint.shape[0]) and mask.shape[0] != hint.shape[0]:
            raise ValueError(f"'importance' has batch {mask.shape[0]} but 'image' has batch {hint.shape[0]}; give one "
                             "map per image or a single map for all")
    patched = model.clone()
    patched.set_model_patch(ControlPatch(controlnet, hint, mask, settings, new_run), CONTROL_PATCH)
    if not patched.get_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY):  # one serves all
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _sampling_run)
    extra = patched.get_additional_models_with_key(WRAPPER_KEY)
    patched.set_additional_models(WRAPPER_KEY, list(extra) + [controlnet])
    return patched


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
        net = load_model_file(FOLDER, controlnet_name, name, "ViT ControlNet", vc.load_controlnet)
        return io.NodeOutput(managed(net))


APPLY_INPUTS = [
    io.Model.Input("model", tooltip="A DiT MODEL from DiffuGAN DiT Loader."),
    ControlNetType.Input("controlnet",
                         tooltip="A ViT ControlNet from DiffuGAN ControlNet Loader, trained for this DiT."),
    io.Image.Input("image", tooltip="Control image (edge map); any size, resized to the latent grid."),
    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                   tooltip="Scale of the ControlNet's residuals; 0 is exactly no ControlNet."),
    io.Float.Input("budget", default=1.0, min=0.01, max=1.0, step=0.01,
                   tooltip="Share of the DiT's tokens the control branch processes, spent where importance (or, "
                           "without it, edge density) is highest (cost falls with it). 0.25 is about 3x cheaper "
                           "than 1."),
    io.Mask.Input("importance", optional=True,
                  tooltip="Where control matters most (e.g. DiffuGAN Importance); without it, where the control "
                          "image has edges."),
]
APPLY_DESCRIPTION = ("Adds structure control (e.g. edges from the stock Canny node or DiffuGAN Edges) to a DiT "
                     "MODEL. The control branch processes `budget` x the DiT's tokens, spent where importance (or "
                     "edge density) is highest, so it costs less where less matters. A plain ControlNet skips the "
                     "other tokens; a mixed-resolution one (the zoo's) merges them 2x2, so from a budget of 0.25 up "
                     "every region is still controlled. Strength 0 leaves the model unchanged; budget 1 is the "
                     "dense ControlNet. Several Apply nodes stack.")


class ControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANControlNetApply",
            display_name="DiffuGAN ViT ControlNet Apply",
            category="DiffuGAN/ControlNet",
            description=APPLY_DESCRIPTION + " Per-token strength, edge priority and budgets spent over sampler steps "
                                            "are on DiffuGAN ViT ControlNet Apply (Advanced).",
            inputs=list(APPLY_INPUTS),
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, controlnet, image, strength, budget, importance=None) -> io.NodeOutput:
        # tokens by importance where the user gave one, else by the control image's edge density
        settings = vc.ControlSettings(strength, budget, edge_priority=0.0 if importance is not None else 1.0)
        return io.NodeOutput(apply_controlnet(model, controlnet, image, settings, importance))


class ControlNetApplyAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANControlNetApplyAdvanced",
            display_name="DiffuGAN ViT ControlNet Apply (Advanced)",
            category="DiffuGAN/ControlNet",
            description=APPLY_DESCRIPTION,
            inputs=APPLY_INPUTS + [
                io.Float.Input("importance_modulation", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0: the same strength everywhere; 1: strength x importance per token."),
                io.Float.Input("edge_priority", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How the budget's tokens are chosen: 0 by importance, 1 by the control "
                                       "image's edge density, between a blend (without an importance map: by edge "
                                       "density)."),
                io.Float.Input("edge_gain", default=0.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Extra strength where edges are dense: x (1 + edge_gain x density)."),
                io.Combo.Input("over_steps", options=TEMPORAL, default=TEMPORAL[0],
                               tooltip="How the branch is spent over the sampler's steps. every step: the budget "
                                       "above at every step. reuse every n steps: the branch runs every n-th step "
                                       "and its residuals are reused between (about 1/n the cost). rotate budget "
                                       "over steps: each step a different interleaved `budget` share of the tokens, "
                                       "spanning the whole image; the others keep their last residuals (the first "
                                       "step processes all)."),
                io.Int.Input("reuse_n", default=2, min=1, max=16,
                             tooltip="For 'reuse every n steps': n."),
                io.Float.Input("rotation_top_share", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="For 'rotate budget over steps': the share of each step's tokens given to "
                                       "the highest-priority tokens at every step (importance first); the rest "
                                       "rotate. 0: plain rotation."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, controlnet, image, strength, budget, importance_modulation, edge_priority, edge_gain,
                over_steps, reuse_n, rotation_top_share, importance=None) -> io.NodeOutput:
        name = "DiffuGAN ViT ControlNet Apply (Advanced)"
        if over_steps not in TEMPORAL:
            raise ValueError(f"{name}: 'over_steps' must be one of {TEMPORAL}, got {over_steps!r}")
        if over_steps == TEMPORAL[1] and reuse_n > 1:
            new_run = lambda: vc.ResidualReuse(int(reuse_n))  # noqa: E731
        elif over_steps == TEMPORAL[2] and budget < 1:
            new_run = lambda: vc.RotatingBudget(budget, rotation_top_share)  # noqa: E731
        else:
            new_run = None
        settings = vc.ControlSettings(strength, budget, importance_modulation, edge_priority, edge_gain)
        return io.NodeOutput(apply_controlnet(model, controlnet, image, settings, importance, new_run, name))


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
                io.Image.Input("image", tooltip="The picture whose edges are found."),
                io.Float.Input("low_threshold", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Canny hysteresis: weaker gradients are never edges."),
                io.Float.Input("high_threshold", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Canny hysteresis: stronger gradients are always edges; between the two, "
                                       "edges connected to strong ones."),
            ],
            outputs=[io.Image.Output(display_name="edges")],
        )

    @classmethod
    def execute(cls, image, low_threshold, high_threshold) -> io.NodeOutput:
        with node_errors("DiffuGAN Edges"):
            edges = vc.canny_edges(image_to_nchw(image, "image"), low_threshold, high_threshold)
        return io.NodeOutput(nchw_to_image(edges.expand(-1, 3, -1, -1)))


NODES = [ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced, Edges]
