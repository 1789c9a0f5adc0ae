"""StyleGAN Style Inject (category DiffuGAN/StyleGAN): steers a StyleGAN draft's W+ toward a DIFFUGAN_STYLE, by
CLIP-guided optimisation (StyleCLIP latent optimisation) or a trained mapper; and its (Advanced) twin."""
from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..models import clip_style as cs
from ..models import stylegan as sg
from ._common import StyleType, check_style, load_model_file, missing_model_message, node_errors
from .clip_style import MAPPER_FOLDER, NO_MAPPER, ClipType
from .stylegan import NOISE_MODES, StyleGANType, WType, check_w, load_on_device, render, w_payload

MODES = ["clip_guided", "mapper"]
DESCRIPTION = ("Steers a draft's W+ toward a style: W+ out = W+ in + strength x offset (strength 0 returns W+ "
               "unchanged). clip_guided optimises the offset so CLIP sees the style in the image (StyleCLIP latent "
               "optimisation, needs 'clip'); mapper computes it in one pass with a mapper trained by "
               "scripts/train_style_mapper.py for this generator and CLIP.")
INPUTS = [
    StyleGANType.Input("stylegan", tooltip="The StyleGAN that made w (from DiffuGAN StyleGAN Loader)."),
    WType.Input("w", tooltip="The drafts' W+ latents (the second output of StyleGAN Generate or Mix)."),
    StyleType.Input("style", tooltip="Where to steer the drafts (from DiffuGAN Style Encode)."),
    io.Combo.Input("mode", options=MODES, default="clip_guided",
                   tooltip="clip_guided: optimise W+ toward the style through the CLIP (slower, needs clip); mapper: "
                           "one step of a trained style mapper (fast, needs mapper)."),
    io.Float.Input("strength", default=1.0, min=-2.0, max=4.0, step=0.05,
                   tooltip="How far to move toward the style; negative moves away from it."),
    ClipType.Input("clip", optional=True, tooltip="Needed by clip_guided: the CLIP that encoded the style."),
    io.Combo.Input("mapper", options=[NO_MAPPER] + folder_paths.get_filename_list(MAPPER_FOLDER), default=NO_MAPPER,
                   optional=True, tooltip="Needed by mapper: a file in models/diffugan_mappers."),
]
ADVANCED_INPUTS = [
    io.Int.Input("steps", default=20, min=1, max=500, tooltip="clip_guided: optimisation steps."),
    io.Float.Input("learning_rate", default=0.05, min=0.001, max=1.0, step=0.005,
                   tooltip="clip_guided: Adam step size in W units."),
    io.Float.Input("tether", default=1.0, min=0.0, max=100.0, step=0.1,
                   tooltip="clip_guided: L2 pull toward the input W; higher keeps more of the draft."),
    io.Combo.Input("noise_mode", options=NOISE_MODES, default="const",
                   tooltip="const: the generator's fixed noise (reproducible); random: fresh noise from noise_seed; "
                           "none: no noise."),
    io.Int.Input("noise_seed", default=0, min=0, max=2**32 - 1, tooltip="Used by noise_mode=random."),
]


class StyleInject(io.ComfyNode):
    NAME = "DiffuGAN StyleGAN Style Inject"
    _NODE_ID, _INPUTS = "DiffuGANStyleInject", INPUTS
    _TEXT = DESCRIPTION + " Optimisation steps, step size, tether and noise are on DiffuGAN StyleGAN Style Inject " \
                          "(Advanced)."

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls._NODE_ID,
            display_name=cls.NAME,
            category="DiffuGAN/StyleGAN",
            description=cls._TEXT,
            inputs=list(cls._INPUTS),
            outputs=[io.Image.Output(display_name="image"), WType.Output(display_name="w")],
        )

    @classmethod
    def validate_inputs(cls, mapper=NO_MAPPER) -> bool | str:
        if mapper in (None, NO_MAPPER):
            return True
        return missing_model_message(MAPPER_FOLDER, mapper, "style mapper")

    @classmethod
    def execute(cls, stylegan, w, style, mode, strength, clip=None, mapper=NO_MAPPER, steps=20, learning_rate=0.05,
                tether=1.0, noise_mode="const", noise_seed=0) -> io.NodeOutput:
        name = cls.NAME
        ws = check_w(stylegan, w, name)
        if strength == 0:
            return io.NodeOutput(render(stylegan, ws, noise_mode, noise_seed), w_payload(stylegan, ws))
        with node_errors(name):
            if mode == "clip_guided":
                delta = cls._clip_guided(stylegan, ws, style, clip, steps, learning_rate, tether, noise_mode)
            elif mode == "mapper":
                delta = cls._mapped(stylegan, ws, style, mapper, name)
            else:
                raise ValueError(f"unknown mode '{mode}'; use one of {MODES}")
            out = ws + strength * delta
        return io.NodeOutput(render(stylegan, out, noise_mode, noise_seed), w_payload(stylegan, out))

    @staticmethod
    def _clip_guided(stylegan, ws, style, clip, steps, lr, tether, noise_mode) -> torch.Tensor:
        if clip is None:
            raise ValueError("mode clip_guided needs the 'clip' input: connect the CLIP loader that encoded the style")
        check_style(style.clip, clip.model.identity, "the 'clip' input uses")
        G, device, _ = load_on_device(stylegan)
        model = clip.loaded()
        # Backward through G and CLIP needs several times the forward memory: chunk the batch accordingly.
        chunk = sg.images_per_chunk(G.config, mm.get_free_memory(device) // 4, most=8)
        pbar = comfy.utils.ProgressBar(steps * ws.shape[0])

        def on_step(i, loss, n):
            mm.throw_exception_if_processing_interrupted()
            pbar.update(n)

        # The optimisation sees the noise the render will use; 'random' noise is held fixed (const) while optimising.
        opt_noise = "none" if noise_mode == "none" else "const"
        deltas = []
        for i in range(0, ws.shape[0], chunk):
            part = ws[i:i + chunk].to(device)
            deltas.append(cs.clip_guided_delta(
                G, model, part, style.embedding.to(device), steps=steps, lr=lr, tether=tether, noise_mode=opt_noise,
                on_step=lambda j, loss, n=part.shape[0]: on_step(j, loss, n)).cpu())
        return torch.cat(deltas)

    @staticmethod
    def _mapped(stylegan, ws, style, mapper_name, name) -> torch.Tensor:
        if mapper_name in (None, NO_MAPPER):
            raise ValueError("mode mapper needs a 'mapper' file (train one with scripts/train_style_mapper.py and put "
                             f"it in the '{MAPPER_FOLDER}' model folder)")
        m = load_model_file(MAPPER_FOLDER, mapper_name, "", "style mapper", cs.load_mapper)
        check_style(style.clip, m.config.clip, f"mapper '{mapper_name}' was trained on")
        G = stylegan.generator
        if (m.config.num_ws, m.config.w_dim) != (G.num_ws, G.w_dim):
            raise ValueError(f"mapper '{mapper_name}' was trained for W+ ({m.config.num_ws}, {m.config.w_dim}) "
                             f"({m.config.generator}), but {stylegan.identity} has ({G.num_ws}, {G.w_dim})")
        if m.config.generator != stylegan.identity:
            logging.warning("%s: mapper '%s' was trained on %s and is used with %s", name, mapper_name,
                            m.config.generator, stylegan.identity)
        with torch.inference_mode():
            return m(style.embedding, ws.float()).float()


class StyleInjectAdvanced(StyleInject):
    NAME = "DiffuGAN StyleGAN Style Inject (Advanced)"
    _NODE_ID, _INPUTS, _TEXT = "DiffuGANStyleInjectAdvanced", INPUTS + ADVANCED_INPUTS, DESCRIPTION


NODES = [StyleInject, StyleInjectAdvanced]
