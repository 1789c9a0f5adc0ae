"""DiT refiner nodes (category DiffuGAN/DiT): a facebookresearch DiT as a stock ComfyUI MODEL, its conditioning,
and region-adaptive refinement (a SAMPLER for SamplerCustomAdvanced and a one-node Refine).

The MODEL speaks SD1 latents (4 channels, scale 0.18215: DiT's VAE is the SD VAE) and DiT's discrete schedule
(linear β 1e-4…0.02, 1000 steps), predicting ε. DiT's learned-variance channels are dropped: ComfyUI's samplers
(Euler, DPM++, DDIM, …) use ε only. Stock KSampler, SamplerCustomAdvanced, DifferentialDiffusion and
SetLatentNoiseMask work with it unchanged.
"""
from __future__ import annotations

import logging

import comfy.conds
import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.supported_models_base
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io, ui

from ..models import dit as dit_model
from ..models import region
from ._common import (StyleType, check_style, image_to_nchw, load_model_file, mask_to_n1hw, missing_model_message,
                      nchw_to_image, node_errors, register_model_folder)
from ._ui import colorize

FOLDER = "dit"
register_model_folder(FOLDER, {".pt", ".pth", ".safetensors"})
NULL_LABEL = -1  # in conditioning: "the model's null class" (classifier-free guidance's unconditional side)
# The model-patch slot (ModelPatcher.set_model_patch) a DiT reads control patches from: each a callable
# (tokens (R, T, D), adaLN conditioning (R, D), token grid, image index per row, transformer_options) -> residuals
# for the outputs of the first blocks, or None. DiffuGAN ViT ControlNet Apply adds one; several sum.
CONTROL_PATCH = "diffugan_dit_control"


class DiTModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": dit_model.BETA_START,
                         "linear_end": dit_model.BETA_END, "timesteps": dit_model.NUM_TIMESTEPS}  # true linear β
    latent_format = comfy.latent_formats.SD15
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    memory_usage_factor = 1.0

    def __init__(self):
        super().__init__({"disable_unet_model_creation": True})  # BaseModel gets our DiT, not a UNet


def _row_images(rows: int, transformer_options: dict) -> list[int]:
    """Image index of each row of a model call: rows are [chunk 0 batch | chunk 1 batch | ...], one chunk per cond
    (e.g. positive, negative)."""
    per = rows // max(len(transformer_options.get("cond_or_uncond", [0])), 1)
    return [r % per for r in range(rows)]


def control_hook(transformer_options: dict, images: list[int]) -> dit_model.Control | None:
    """The DiT's control hook for rows showing `images`: the sum of every control patch on the MODEL (CONTROL_PATCH;
    residual lists of different depths add layer by layer), or None when there is none."""
    patches = transformer_options.get("patches", {}).get(CONTROL_PATCH, [])
    if not patches:
        return None

    def hook(tokens, c, grid):
        total = None
        for patch in patches:
            res = patch(tokens, c, grid, images, transformer_options)
            if res is None:
                continue
            if total is None:
                total = list(res)
            else:
                total = [a + b for a, b in zip(total, res)] + (total[len(res):] or res[len(total):])
        return total

    return hook


class DiTDiffusionModel(torch.nn.Module):
    """What BaseModel calls: (x, timesteps, context, y=labels, style=...) -> ε with the latent's channels. Like
    ComfyUI's own diffusion models it runs the DIFFUSION_MODEL wrappers of the call (EasyCache's, the
    region-adaptive sampler's) around its forward, and reads control patches from transformer_options."""

    def __init__(self, dit: dit_model.DiT):
        super().__init__()
        self.dit = dit

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.x_embedder.proj.weight.dtype

    def forward(self, x, timesteps, context=None, y=None, style=None, control=None, transformer_options={}, **kw):
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                           transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, y, style, transformer_options)

    def _forward(self, x, timesteps, y, style, transformer_options):
        hook = control_hook(transformer_options, _row_images(x.shape[0], transformer_options))
        out = self.dit(x, timesteps, y, style, control=hook)
        return out[:, : self.dit.config.in_channels]  # ε; the learned-variance half is not used by these samplers


class DiTModel(comfy.model_base.BaseModel):
    def __init__(self, dit: dit_model.DiT, device=None):
        super().__init__(DiTModelConfig(), comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = DiTDiffusionModel(dit)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        config = self.diffusion_model.dit.config
        if "dit_label" not in kwargs:
            raise ValueError("a DiffuGAN DiT needs its conditioning from 'DiffuGAN DiT Conditioning' (class label); "
                             "this conditioning came from another node (e.g. CLIPTextEncode), which a DiT cannot read")
        label = kwargs["dit_label"]
        if label == NULL_LABEL:
            label = config.null_class
        elif not 0 <= label < config.num_classes:
            raise ValueError(f"DiT class label {label} is out of range: this model has {config.num_classes} classes "
                             f"(0..{config.num_classes - 1})")
        out["y"] = comfy.conds.CONDRegular(torch.tensor([label], dtype=torch.long))
        style = kwargs.get("dit_style")
        if style is not None:
            if config.style_dim == 0:
                raise ValueError("this DiT was not trained with style conditioning: disconnect 'style' from "
                                 "'DiffuGAN DiT Conditioning' or load a DiT trained with it")
            if style.shape[-1] != config.style_dim:
                raise ValueError(f"the style embedding has {style.shape[-1]} dimensions but this DiT expects "
                                 f"{config.style_dim}: encode the style with the CLIP the DiT was trained with")
            trained_on, given = self.diffusion_model.dit.style_clip, kwargs.get("dit_style_clip", "")
            if trained_on and given:
                check_style(given, trained_on, "this DiT was trained on the embeddings of")
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
        dit = load_model_file(FOLDER, ckpt_name, name, "DiT checkpoint",
                              lambda path: dit_model.load_dit(path, num_heads=num_heads or None))
        return io.NodeOutput(dit_to_comfy_model(dit))


def _conditioning(label: int, style=None, weight: float = 1.0) -> list:
    """One CONDITIONING entry for a DiT. A style with weight 0 is a zero vector, which the DiT reads as "no style"
    (models/dit.DiT.conditioning): the negative side gets one, so ComfyUI batches both sides of classifier-free
    guidance into one model call instead of two (their conds have the same keys and shapes)."""
    extra = {"dit_label": label}  # the cross-attention tensor below is unused by DiT but part of every entry
    if style is not None:
        extra["dit_style"] = style.embedding.float().view(1, -1) * weight
        extra["dit_style_clip"] = style.clip
    return [[torch.zeros(1, 1, 1), extra]]


class DiTConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDiTConditioning",
            display_name="DiffuGAN DiT Conditioning",
            category="DiffuGAN/DiT",
            description=("Class conditioning for a DiT as stock CONDITIONING: positive = the class (ImageNet index for "
                         "the released models, e.g. 207 golden retriever), negative = the null class for "
                         "classifier-free guidance. class_label -1 makes both unconditional. An optional style "
                         "(DiffuGAN Style Encode) conditions DiTs trained with it."),
            inputs=[io.Int.Input("class_label", default=0, min=-1, max=100000,
                                 tooltip="The DiT's class (ImageNet 0-999 for the released DiTs; the zoo DiT's card "
                                         "lists its labels); -1: no class (the null label, for a style alone)."),
                    StyleType.Input("style", optional=True,
                                    tooltip="For DiTs trained with style conditioning: the positive side gets the "
                                            "style, the negative side none, so CFG pushes toward the style.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, class_label, style=None) -> io.NodeOutput:
        return io.NodeOutput(_conditioning(class_label, style), _conditioning(NULL_LABEL, style, weight=0.0))


# --------------------------------------------------------------------------------------------------------------
# Region-adaptive refinement
# --------------------------------------------------------------------------------------------------------------
def _region_wrapper(run: region.RegionRefinement):
    """A DIFFUSION_MODEL wrapper for one sampling run: the DiT evaluated region-adaptively by `run` instead of on
    every token. Added to the run's own model options, so it lives exactly as long as the run."""

    def wrapper(executor, x, timesteps, y, style, transformer_options):
        mm.throw_exception_if_processing_interrupted()
        # Rows are [chunk 0 batch | chunk 1 batch | ...], one chunk per cond (e.g. positive, negative).
        chunks = transformer_options.get("uuids") or list(range(len(transformer_options.get("cond_or_uncond", [0]))))
        per = x.shape[0] // max(len(chunks), 1)
        row_keys = [(chunks[r // per], r % per) for r in range(x.shape[0])]
        images = _row_images(x.shape[0], transformer_options)
        sigma = transformer_options["sigmas"].max().to(x.device).expand(x.shape[0])  # one noise level per step
        return run(x, timesteps, sigma, y, style, row_keys, images,
                   control_for=lambda rows: control_hook(transformer_options, [images[r] for r in rows]))

    return wrapper


def region_adaptive_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, importance=None,
                          min_steps=0, border=0, dense_every=0, report=None):
    """k-diffusion-style sampler: Euler, with each token evaluated only at its own steps (see
    models/region.evaluation_schedule); between them its clean-latent prediction and its keys/values are forecast
    from its last two evaluations (models/region.RegionRefinement). The refinement run is created here and dropped
    when sampling ends (also on error or interrupt): nothing is kept between prompts. A `report` dict (the Refine
    nodes pass one) receives the per-token step counts, the token grid, the run's summary, its counted FLOPs (and the
    dense count), and its evaluation schedule beside the evaluations that ran (`scheduled`, `done`: (B, K, T))."""
    extra_args = dict(extra_args or {})
    base = getattr(getattr(model, "inner_model", None), "inner_model", None)
    if not isinstance(base, DiTModel):
        raise ValueError("DiffuGAN Region-Adaptive Sampler: needs a DiffuGAN DiT model (from DiffuGAN DiT Loader), "
                         f"got {type(base).__name__}; for other models use a stock sampler")
    dit = base.diffusion_model.dit
    steps = len(sigmas) - 1
    if steps < 1:
        return x
    level = importance.to(x.device)
    if level.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"DiffuGAN Region-Adaptive Sampler: 'importance' has batch {level.shape[0]} but the "
                         f"latent has batch {x.shape[0]}; give one map per image or a single map")
    counts = region.token_step_counts(level, dit.grid(x), steps, min_steps, border)
    draft = getattr(model, "latent_image", None)
    run = region.RegionRefinement(dit, counts, sigmas, draft, dense_every)
    model_options = comfy.patcher_extension.copy_nested_dicts(extra_args.get("model_options", {}))
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                 "diffugan_region", _region_wrapper(run), model_options,
                                                 is_model_options=True)
    extra_args["model_options"] = model_options
    samples = k_diffusion_sampling.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback,
                                                disable=disable)
    if draft is not None and draft.shape[-2:] == samples.shape[-2:]:
        keep = run.untouched_pixels(dit.grid(samples)).to(samples.device)
        samples = torch.where(keep, draft.to(samples), samples)  # 0-step regions: exactly the draft
    logging.info("DiffuGAN region-adaptive sampling: %s", run.summary())
    if report is not None:
        report.update(counts=counts.cpu(), grid=tuple(s // dit.config.patch_size for s in x.shape[-2:]), steps=steps,
                      summary=run.summary(), flops=run.flops, dense_flops=run.dense_flops,
                      scheduled=run.schedule, done=run.done)
    return samples


def _level_map(mask: torch.Tensor) -> torch.Tensor:
    with node_errors("DiffuGAN Region-Adaptive Sampler"):
        return mask_to_n1hw(mask, "importance").clamp(0, 1)  # (B, 1, H, W)


def region_sampler(importance: torch.Tensor, min_steps: int, border: int, dense_every: int, report=None):
    """The SAMPLER object the region nodes use."""
    return comfy.samplers.KSAMPLER(region_adaptive_euler, extra_options={
        "importance": _level_map(importance), "min_steps": min_steps, "border": border, "dense_every": dense_every,
        "report": report})


IMPORTANCE_INPUTS = [
    io.Mask.Input("importance", tooltip="Where detail matters (0..1), e.g. from DiffuGAN Importance or its Budget "
                                        "node. Each token (16 px) gets min_steps plus its pixels' mean level of the "
                                        "steps above them: all 1 gets every step, all 0 gets min_steps (with "
                                        "min_steps 0 a token whose mean is near 0 stays the draft, even if a few of "
                                        "its pixels are 1)."),
    io.Int.Input("min_steps", default=0, min=0, max=1000,
                 tooltip="Steps for the least important regions; 0 leaves them exactly as the draft."),
]
TUNING_INPUTS = [
    io.Int.Input("border", default=0, min=0, max=8,
                 tooltip="Grow important regions by this many tokens so their edges get the same steps (costs "
                         "compute: each token otherwise gets the mean work of its pixels)."),
    io.Int.Input("dense_every", default=0, min=0, max=1000,
                 tooltip="Every N steps evaluate all tokens (refreshes the cached context); 0 = only the first."),
]


class RegionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANRegionSampler",
            display_name="DiffuGAN Region-Adaptive Sampler",
            category="DiffuGAN/DiT",
            description=("A SAMPLER for SamplerCustomAdvanced with a DiffuGAN DiT: Euler steps where each region gets "
                         "its own step count from the importance map (the SIGMAS give the most steps). The "
                         "transformer only computes the tokens whose step it is; for the others the prediction "
                         "and the keys/values they lend as attention context are forecast (linearly, from their "
                         "last two evaluations). All tokens share one noise level at every step, so region "
                         "borders get no noise seams."),
            inputs=IMPORTANCE_INPUTS + TUNING_INPUTS,
            outputs=[io.Sampler.Output(display_name="sampler")],
        )

    @classmethod
    def execute(cls, importance, min_steps, border, dense_every) -> io.NodeOutput:
        return io.NodeOutput(region_sampler(importance, min_steps, border, dense_every))


def refine(model, positive, negative, latent, seed, max_steps, strength, cfg, importance, min_steps,
           scheduler="normal", border=0, dense_every=0) -> tuple[dict, torch.Tensor | None]:
    """Region-adaptive img2img of a LATENT with a DiT MODEL; what both Refine nodes run. Returns the latent and
    the step map the run used (an IMAGE: each token's step count as a heat colour, at the image's size), or None
    when nothing ran."""
    with node_errors("DiffuGAN DiT Refine"):
        check_refine_inputs(model, positive, negative, latent, importance)
    if strength <= 0:
        return latent, None
    total = int(max_steps / strength) if strength < 1 else max_steps
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
    sigmas = sigmas[-(max_steps + 1):]
    report = {}
    sampler = region_sampler(importance, min(min_steps, max_steps), border, dense_every, report)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, max_steps)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = dict(latent)
    out["samples"] = samples
    return out, step_map_image(report, latent_image.shape[-2:])


def check_refine_inputs(model, positive, negative, latent, importance) -> None:
    """What the Refine nodes need, each refused naming its input: a DiffuGAN DiT MODEL, conditioning from DiT
    Conditioning, a LATENT of the DiT's channels and a size its patches tile, finite, and an importance map with one
    map per latent or a single map."""
    dit = getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "dit", None)
    if not hasattr(getattr(dit, "config", None), "patch_size"):  # a DiffuGAN DiT (duck-typed: tests build their own)
        raise ValueError("'model' is not a DiffuGAN DiT: load one with DiffuGAN DiT Loader (a Stable Diffusion "
                         "MODEL refines with the stock KSampler instead)")
    for name, cond in (("positive", positive), ("negative", negative)):
        ok = isinstance(cond, list) and cond and all(
            isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[1], dict) and "dit_label" in c[1]
            for c in cond)
        if not ok:
            raise ValueError(f"'{name}' is not DiT conditioning: connect DiffuGAN DiT Conditioning (a text encoder's "
                             "CONDITIONING, e.g. CLIPTextEncode, is something a DiT cannot read)")
    samples = _latent_samples(latent, "latent")
    b, c, h, w = samples.shape
    p = dit.config.patch_size
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"'latent' is empty (shape {tuple(samples.shape)})")
    if c != dit.config.in_channels:
        raise ValueError(f"'latent' has {c} channels but this DiT works on {dit.config.in_channels}: encode the draft "
                         "with the VAE the DiT was trained with (an SD1-type VAE)")
    if h % p or w % p:
        raise ValueError(f"'latent' is {h}x{w} ({8 * h}x{8 * w} px), which the DiT's {p}x{p} patches do not tile: "
                         f"use an image whose sides are multiples of {8 * p} pixels (e.g. an ImageScale node before "
                         "VAE Encode)")
    from ..models.importance import check_finite

    check_finite("latent", samples)
    m = mask_to_n1hw(importance, "importance")
    if m.shape[0] not in (1, b):
        raise ValueError(f"'importance' has batch {m.shape[0]} but 'latent' has batch {b}; give one map per image "
                         "or a single map for all")


def step_map_image(report: dict, latent_hw) -> torch.Tensor | None:
    """The per-token step counts of a run as a heat-coloured IMAGE (blue: few steps, red: all), one per image,
    each token a block of the image's pixels (8 per latent pixel)."""
    if "counts" not in report:
        return None
    counts = report["counts"].float() / max(report["steps"], 1)  # (B, T)
    grid = counts.view(counts.shape[0], 1, *report["grid"])
    size = (latent_hw[0] * 8, latent_hw[1] * 8)
    return colorize(torch.nn.functional.interpolate(grid, size=size, mode="nearest")).movedim(1, -1).contiguous()


REFINE_INPUTS = [
    io.Model.Input("model",
                   tooltip="A DiT from DiffuGAN DiT Loader (optionally patched, e.g. by a ControlNet Apply or "
                           "EasyCache)."),
    io.Conditioning.Input("positive",
                          tooltip="From DiffuGAN DiT Conditioning: the class (and style) to refine toward."),
    io.Conditioning.Input("negative",
                          tooltip="From DiffuGAN DiT Conditioning: the unconditional side of classifier-free "
                                  "guidance."),
    io.Latent.Input("latent", tooltip="The draft, encoded by the VAE the DiT was trained with (stock VAE Encode)."),
    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                 tooltip="Seed of the noise added to the draft."),
    io.Int.Input("max_steps", default=20, min=1, max=1000, tooltip="Steps for the most important regions."),
    io.Float.Input("strength", default=0.6, min=0.0, max=1.0, step=0.01,
                   tooltip="How much noise is added to the draft (img2img denoise): 0 returns it unchanged."),
    io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1,
                   tooltip="Classifier-free guidance scale; 1 turns guidance off (half the compute)."),
]
REFINE_DESCRIPTION = ("Refines a draft latent (VAEEncode of the StyleGAN draft) with a DiT: important regions get up "
                      "to max_steps, the rest as few as min_steps (0 = untouched), and compute falls with the number "
                      "of active tokens. strength = how much noise is added (img2img denoise). After a run the node "
                      "shows the step map it used: each token's steps, blue (few) to red (all). Measured on the "
                      "256-token zoo DiT with Importance Budget levels 4 / budget 0.1 and min_steps 3: 4.25x fewer "
                      "transformer FLOPs and 2.8x faster than refining every token every step (CPU, batch 4), "
                      "missing 6 % of that refinement's change where importance is highest; uniform with fewer steps "
                      "at the same time misses 15-20 % (benchmarks/results/refine_zoo.json in the repository).")


class DiTRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDiTRefine",
            display_name="DiffuGAN DiT Refine",
            category="DiffuGAN/DiT",
            description=REFINE_DESCRIPTION + " The schedule, region borders and dense refreshes are on DiffuGAN DiT "
                                             "Refine (Advanced).",
            inputs=REFINE_INPUTS + IMPORTANCE_INPUTS,
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, max_steps, strength, cfg, importance,
                min_steps) -> io.NodeOutput:
        out, step_map = refine(model, positive, negative, latent, seed, max_steps, strength, cfg, importance,
                               min_steps)
        return _with_step_map(cls, out, step_map)


class DiTRefineAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDiTRefineAdvanced",
            display_name="DiffuGAN DiT Refine (Advanced)",
            category="DiffuGAN/DiT",
            description=REFINE_DESCRIPTION,
            inputs=REFINE_INPUTS + [io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES),
                                                   default="normal",
                                                   tooltip="Any ComfyUI scheduler; normal is the plain img2img "
                                                           "schedule.")] + IMPORTANCE_INPUTS + TUNING_INPUTS,
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, max_steps, strength, cfg, scheduler, importance,
                min_steps, border, dense_every) -> io.NodeOutput:
        out, step_map = refine(model, positive, negative, latent, seed, max_steps, strength, cfg, importance,
                               min_steps, scheduler, border, dense_every)
        return _with_step_map(cls, out, step_map)


def _latent_samples(latent, name: str) -> torch.Tensor:
    """The samples [B, C, H, W] of an image LATENT input, or a refusal naming it."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError(f"'{name}' is not an image LATENT (a dict with 'samples' [B, C, H, W]); connect VAE "
                         "Encode's output or a sampler's")
    return samples


def _with_step_map(cls, latent: dict, step_map: torch.Tensor | None) -> io.NodeOutput:
    """The refined latent, with the run's step map shown on the node (a preview, not an output)."""
    if step_map is None:
        return io.NodeOutput(latent)
    return io.NodeOutput(latent, ui=ui.PreviewImage(step_map, cls=cls))


class KeepCoarse(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANKeepCoarse",
            display_name="DiffuGAN Keep Coarse",
            category="DiffuGAN/DiT",
            description=("Non-destructive refinement: the refined image with the coarse content (colours, layout) of "
                         "its draft or input put back, so only the detail finer than the reference's own resolution "
                         "comes from the refiner: reference at coarse_px + (image − image at coarse_px). Use it after "
                         "decoding a refinement to stop colour drift, or to restore a blurry or upscaled picture "
                         "without losing what it shows."),
            inputs=[
                io.Image.Input("image", tooltip="The refined image (e.g. VAE Decode of DiT Refine)."),
                io.Image.Input("reference", tooltip="The draft or input whose coarse content to keep (resized to "
                                                    "the image's size if it differs; one image or one per image)."),
                io.Int.Input("coarse_px", default=64, min=1, max=8192,
                             tooltip="The reference's real resolution, in pixels a side: the scale below which "
                                     "its content is kept (64 for a 64 px GAN draft, the small side of an "
                                     "upscaled picture). Higher keeps more of the reference."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image, reference, coarse_px) -> io.NodeOutput:
        with node_errors("DiffuGAN Keep Coarse"):
            x, ref = image_to_nchw(image, "image"), image_to_nchw(reference, "reference")
            if ref.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"'reference' has batch {ref.shape[0]} but 'image' has batch {x.shape[0]}; give one "
                                 "reference per image or a single one")
            if coarse_px > min(x.shape[-2:]):
                raise ValueError(f"'coarse_px' ({coarse_px}) is above the image's size {x.shape[-1]}x{x.shape[-2]}: "
                                 "it would keep the reference whole; use at most the image's smaller side")
            return io.NodeOutput(nchw_to_image(region.keep_coarse(x, ref, coarse_px)))


class DecodeRefinement(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANDecodeRefinement",
            display_name="DiffuGAN Decode Refinement",
            category="DiffuGAN/DiT",
            description=("VAE Decode that keeps your picture: decodes the refined latent and the latent the refiner "
                         "started from, and adds the difference (what the refiner changed) to the original image: "
                         "original + (decode(refined) - decode(start)). The VAE's own round-trip error (colour "
                         "drift, texture on pictures it was not trained on) is in both decodes and cancels, so only "
                         "the refinement reaches the result; 'decoded' is the plain VAE Decode of the refined latent. "
                         "With keep_colour only the change's light and shade is added and the original's colours stay. "
                         "Costs one more decode than VAE Decode."),
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that encoded the original (the refiner's own VAE)."),
                io.Latent.Input("refined", tooltip="The refined latent (DiffuGAN Refine, or any sampler's output)."),
                io.Latent.Input("start", tooltip="The latent the refiner started from: VAE Encode of the original."),
                io.Image.Input("original", tooltip="The image that was encoded to 'start' (e.g. the scaled draft; "
                                                   "another size is scaled to the decoded one, bicubic)."),
                io.Boolean.Input("keep_colour", default=False, optional=True,
                                 tooltip="Add only the refinement's luminance (light and shade: edges, outlines, "
                                         "shading), the same to R, G and B, so the original's colours stay as they "
                                         "were: no hue drift (a yellow face going green in its dark mouth). Off: "
                                         "the whole change, colour included."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="decoded")],
        )

    @classmethod
    def execute(cls, vae, refined, start, original, keep_colour=False) -> io.NodeOutput:
        with node_errors("DiffuGAN Decode Refinement"):
            x = image_to_nchw(original, "original")
            r, s = (_latent_samples(v, name) for v, name in ((refined, "refined"), (start, "start")))
            if r.shape[1:] != s.shape[1:] or s.shape[0] not in (1, r.shape[0]):
                raise ValueError(f"'start' has shape {tuple(s.shape)} but 'refined' {tuple(r.shape)}: connect the "
                                 "latent the refiner started from (VAE Encode of the original), one or one per image")
            if x.shape[0] not in (1, r.shape[0]):
                raise ValueError(f"'original' has batch {x.shape[0]} but 'refined' has batch {r.shape[0]}; give one "
                                 "original per refined latent or a single one")
            decoded, recon = (image_to_nchw(vae.decode(z), name) for z, name in ((r, "refined"), (s, "start")))
            if x.shape[-2:] != decoded.shape[-2:]:  # e.g. the draft before its ImageScale: scaled as that would
                x = torch.nn.functional.interpolate(x, size=decoded.shape[-2:], mode="bicubic", align_corners=False)
            out = region.add_refinement(x.to(decoded), decoded, recon, keep_colour=bool(keep_colour))
            return io.NodeOutput(nchw_to_image(out), nchw_to_image(decoded))


NODES = [DiTLoader, DiTConditioning, RegionSampler, DiTRefine, DiTRefineAdvanced, KeepCoarse, DecodeRefinement]
