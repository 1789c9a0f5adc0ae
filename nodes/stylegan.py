"""StyleGAN nodes (category DiffuGAN/StyleGAN): loader, generate, style mix, render from W.

Custom types: DIFFUGAN_STYLEGAN (a loaded generator in ComfyUI's model management) and DIFFUGAN_W (W+ latents
plus the identity of the generator that made them, so another generator refuses them with a clear error).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..models import stylegan as sg
from ._common import (
    generated_to_image,
    StyleType,
    check_style,
    load_model_file,
    managed,
    missing_model_message,
    node_errors,
    register_model_folder,
)

FOLDER = "stylegan"
register_model_folder(FOLDER, {".pkl", ".safetensors"})

StyleGANType = io.Custom("DIFFUGAN_STYLEGAN")
WType = io.Custom("DIFFUGAN_W")
NOISE_MODES = ["const", "random", "none"]
CHUNK = 8  # images per forward pass: bounds memory, gives progress and interrupt points


@dataclass
class StyleGANModel:
    """What flows on a DIFFUGAN_STYLEGAN wire."""

    patcher: comfy.model_patcher.ModelPatcher
    name: str

    @property
    def generator(self) -> sg.Generator:
        return self.patcher.model

    @property
    def identity(self) -> str:
        return sg.describe(self.generator, self.name)


def load_on_device(model: StyleGANModel) -> tuple[sg.Generator, torch.device, bool]:
    mm.load_models_gpu([model.patcher])
    device = model.patcher.load_device
    fp16 = device.type == "cuda" and mm.should_use_fp16(device)
    return model.generator, device, fp16


def render(model: StyleGANModel, ws: torch.Tensor, noise_mode: str, seed: int) -> torch.Tensor:
    G, device, fp16 = load_on_device(model)
    pbar = comfy.utils.ProgressBar(ws.shape[0])
    out = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    step = sg.images_per_chunk(G.config, mm.get_free_memory(device), most=CHUNK)  # big StyleGAN3s: one at a time
    for i in range(0, ws.shape[0], step):
        mm.throw_exception_if_processing_interrupted()
        chunk = ws[i:i + step].to(device)
        with torch.inference_mode():  # random noise is drawn on CPU from the seed: the same on every device
            img = G.synthesis(chunk, noise_mode=noise_mode, generator=gen, fp16=fp16)
        out.append(generated_to_image(img))
        pbar.update(chunk.shape[0])
    return torch.cat(out)


def w_payload(model: StyleGANModel, ws: torch.Tensor) -> dict:
    return {"ws": ws.detach().float().cpu(), "model": model.identity,
            "layer_names": model.generator.synthesis.layer_names()}


def check_w(model: StyleGANModel, w: dict, node: str, name: str = "w") -> torch.Tensor:
    """W+ must fit the generator. W from another file of the same architecture is allowed (a known trick between
    fine-tunes of one base model) but noted in the log, since it usually is a wiring mistake."""
    ws = w.get("ws") if isinstance(w, dict) else None
    if not isinstance(ws, torch.Tensor) or ws.ndim != 3:
        raise ValueError(f"{node}: '{name}' is not a W+ latent (connect the 'w' output of StyleGAN Generate, Mix or "
                         "Style Inject)")
    if ws.shape[0] == 0:
        raise ValueError(f"{node}: '{name}' is empty (a batch of 0)")
    if not torch.isfinite(ws).all():
        raise ValueError(f"{node}: '{name}' contains NaN/inf values; fix the node that produced it")
    G = model.generator
    if tuple(ws.shape[1:]) != (G.num_ws, G.w_dim):
        raise ValueError(f"{node}: '{name}' comes from {w.get('model')}, which does not fit {model.identity}: "
                         f"W+ shape {tuple(ws.shape[1:])} vs ({G.num_ws}, {G.w_dim}). Use the same generator")
    if w.get("model") != model.identity:
        logging.warning("%s: '%s' was made by %s but is rendered by %s", node, name, w.get("model"), model.identity)
    return ws


class StyleGANLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleGANLoader",
            display_name="DiffuGAN StyleGAN Loader",
            category="DiffuGAN/StyleGAN",
            description=("Loads a StyleGAN2 / StyleGAN2-ADA / StyleGAN3 generator from models/stylegan: NVIDIA .pkl "
                         "(PyTorch, or the original TensorFlow StyleGAN2 / StyleGAN2-ADA ones, converted on load; read "
                         "without executing the code they carry; G_ema, or a TF file's Gs, is used) or a .safetensors "
                         "made by scripts/convert_stylegan.py."),
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in ComfyUI/models/stylegan")],
            outputs=[StyleGANType.Output(display_name="stylegan")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        return missing_model_message(FOLDER, ckpt_name, "StyleGAN checkpoint")

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        name = "DiffuGAN StyleGAN Loader"
        G = load_model_file(FOLDER, ckpt_name, name, "StyleGAN checkpoint", sg.load_stylegan)
        return io.NodeOutput(StyleGANModel(managed(G), ckpt_name))


class StyleGANGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleGANGenerate",
            display_name="DiffuGAN StyleGAN Generate",
            category="DiffuGAN/StyleGAN",
            description=("Draws a batch of drafts from consecutive seeds (seed, seed+1, …; the same images NVIDIA's "
                         "gen_images.py gives for those seeds). Also outputs their W+ for mixing and style injection."),
            inputs=[
                StyleGANType.Input("stylegan", tooltip="A StyleGAN from DiffuGAN StyleGAN Loader."),
                io.Int.Input("seed", default=0, min=0, max=2**32 - 1, control_after_generate=True,
                             tooltip="Seed of the latent z (image i of a batch uses seed + i, as NVIDIA's generate "
                                     "script)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of drafts."),
                io.Float.Input("truncation_psi", default=0.7, min=-1.0, max=2.0, step=0.05,
                               tooltip="'Temperature': 1 = full variety, 0 = the average image, 0.5–0.8 = typical."),
                io.Int.Input("truncation_cutoff", default=0, min=0, max=64,
                             tooltip="Truncate only the first N style layers (coarse structure); 0 = all layers."),
                io.Combo.Input("noise_mode", options=NOISE_MODES, default="const",
                               tooltip="StyleGAN2 per-pixel noise: const (stored), random (from the seed), none."),
                io.Int.Input("class_label", default=0, min=0, max=100000,
                             tooltip="Class for conditional generators (ignored by unconditional and by "
                                     "text-conditioned ones)."),
                StyleType.Input("style", optional=True,
                                tooltip="For a text-conditioned generator (such as the zoo's emoji StyleGAN): the "
                                        "prompt, from DiffuGAN Style Encode with the CLIP it was trained on. Without "
                                        "it, it draws unprompted. Truncation then pulls toward the prompt's own "
                                        "average image. Other generators take a style through Style Inject."),
            ],
            outputs=[io.Image.Output(display_name="image"), WType.Output(display_name="w")],
        )

    @classmethod
    def execute(cls, stylegan, seed, batch_size, truncation_psi, truncation_cutoff, noise_mode,
                class_label, style=None) -> io.NodeOutput:
        name = "DiffuGAN StyleGAN Generate"
        G = stylegan.generator
        with node_errors(name):
            seeds = [(seed + i) % 2**32 for i in range(batch_size)]
            z = sg.z_from_seeds(seeds, G.z_dim)
            c = _labels(G, class_label, style, batch_size)
            G, device, _ = load_on_device(stylegan)
            with torch.inference_mode():
                ws = sg.mapping_truncated(G, z.to(device), c.to(device) if c is not None else None, truncation_psi,
                                          truncation_cutoff or None)
            image = render(stylegan, ws, noise_mode, seed)
        return io.NodeOutput(image, w_payload(stylegan, ws))


def _labels(G: sg.Generator, class_label: int, style, batch_size: int) -> torch.Tensor | None:
    """The generator's label input c: a prompt's embedding for a text-conditioned generator (zeros, its unprompted
    mode, without one), a one-hot class for a class-conditional one, None for an unconditional one."""
    if G.style_clip:
        if style is None:
            return torch.zeros(batch_size, G.c_dim)
        check_style(style.clip, G.style_clip, "this generator was trained on")
        return style.embedding.float().view(1, -1).expand(batch_size, -1)
    if style is not None:
        raise ValueError("this generator is not text-conditioned, so it takes no 'style': disconnect it and steer "
                         "the draft with DiffuGAN Style Inject (a style mapper) instead")
    return sg.class_one_hot([class_label] * batch_size, G.c_dim)


class StyleGANMix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleGANMix",
            display_name="DiffuGAN StyleGAN Style Mix",
            category="DiffuGAN/StyleGAN",
            description=("Style mixing: W+ of A with the style layers [layer_start, layer_end) taken from B. Early "
                         "layers carry pose and shape, late layers colour and texture. A batch of 1 is broadcast."),
            inputs=[
                StyleGANType.Input("stylegan", tooltip="A StyleGAN from DiffuGAN StyleGAN Loader."),
                WType.Input("w_a", tooltip="Keeps its styles outside the range."),
                WType.Input("w_b", tooltip="Gives its styles inside the range."),
                io.Int.Input("layer_start", default=0, min=0, max=64,
                             tooltip="First style layer taken from w_b (early layers: pose and shape; late: colour "
                                     "and texture)."),
                io.Int.Input("layer_end", default=4, min=0, max=64,
                             tooltip="Exclusive; the generator's number of style layers is in the error if exceeded."),
                io.Combo.Input("noise_mode", options=NOISE_MODES, default="const",
                               tooltip="const: the generator's fixed noise (reproducible); random: fresh noise from "
                                       "noise_seed; none: no noise."),
                io.Int.Input("noise_seed", default=0, min=0, max=2**32 - 1, tooltip="Used by noise_mode=random."),
            ],
            outputs=[io.Image.Output(display_name="image"), WType.Output(display_name="w")],
        )

    @classmethod
    def execute(cls, stylegan, w_a, w_b, layer_start, layer_end, noise_mode, noise_seed) -> io.NodeOutput:
        name = "DiffuGAN StyleGAN Style Mix"
        a, b = check_w(stylegan, w_a, name, "w_a"), check_w(stylegan, w_b, name, "w_b")
        if a.shape[0] != b.shape[0]:
            if 1 not in (a.shape[0], b.shape[0]):
                raise ValueError(f"{name}: 'w_a' has batch {a.shape[0]} and 'w_b' batch {b.shape[0]}; give equal "
                                 "batches or a batch of 1 on one side")
            n = max(a.shape[0], b.shape[0])
            a, b = a.expand(n, -1, -1), b.expand(n, -1, -1)
        with node_errors(name):
            ws = sg.mix_styles(a, b, layer_start, layer_end)
            image = render(stylegan, ws, noise_mode, noise_seed)
        return io.NodeOutput(image, w_payload(stylegan, ws))


class StyleGANFromW(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleGANFromW",
            display_name="DiffuGAN StyleGAN From W",
            category="DiffuGAN/StyleGAN",
            description=("Renders images from W+ latents (e.g. edited by style injection) with the generator that "
                         "made them."),
            inputs=[
                StyleGANType.Input("stylegan", tooltip="A StyleGAN from DiffuGAN StyleGAN Loader."),
                WType.Input("w",
                            tooltip="W+ latents (from StyleGAN Generate, Mix or Style Inject) for this generator."),
                io.Combo.Input("noise_mode", options=NOISE_MODES, default="const",
                               tooltip="const: the generator's fixed noise (reproducible); random: fresh noise from "
                                       "noise_seed; none: no noise."),
                io.Int.Input("noise_seed", default=0, min=0, max=2**32 - 1, tooltip="Used by noise_mode=random."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, stylegan, w, noise_mode, noise_seed) -> io.NodeOutput:
        ws = check_w(stylegan, w, "DiffuGAN StyleGAN From W")
        return io.NodeOutput(render(stylegan, ws, noise_mode, noise_seed))


NODES = [StyleGANLoader, StyleGANGenerate, StyleGANMix, StyleGANFromW]
