"""CLIP style nodes: loader, Style Encode, Style Mix (category DiffuGAN/CLIP Style), and Style Inject, which steers
a StyleGAN draft's W+ toward a style (category DiffuGAN/StyleGAN).

Custom types: DIFFUGAN_CLIP (an open_clip model in ComfyUI's model management) and DIFFUGAN_STYLE (a unit style
embedding with its parts and the identity of the CLIP that made it, so a stage refuses an embedding from another
CLIP with a clear error).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..models import clip_style as cs
from ..models import stylegan as sg
from ._common import (StyleType, check_style, missing_model_message, model_file_or_error, node_errors,
                      register_model_folder)
from .stylegan import NOISE_MODES, StyleGANType, WType, _check_w, _load_on_device, _render, _w_payload

FOLDER = "clip_style"
MAPPER_FOLDER = "diffugan_mappers"
register_model_folder(FOLDER, {".safetensors", ".bin", ".pt", ".pth"})
register_model_folder(MAPPER_FOLDER, {".safetensors"})

ClipType = io.Custom("DIFFUGAN_CLIP")
NO_MAPPER = "none"
EXPECTED = ("open_clip weights, e.g. a hub folder laion/CLIP-ViT-B-32-laion2B-s34B-b79K/ with "
            "open_clip_pytorch_model.bin (or open_clip_model.safetensors) and open_clip_config.json, or a single file "
            "named after its architecture such as ViT-B-32-laion2b_s34b_b79k.bin")


@dataclass
class ClipModel:
    """What flows on a DIFFUGAN_CLIP wire."""

    patcher: comfy.model_patcher.ModelPatcher
    name: str

    @property
    def model(self) -> cs.StyleCLIP:
        return self.patcher.model

    def loaded(self) -> cs.StyleCLIP:
        mm.load_models_gpu([self.patcher])
        return self.model


def _images_nchw(images: torch.Tensor, name: str) -> torch.Tensor:
    """IMAGE (B, H, W, C) with any channel count our encoder accepts -> RGB (B, 3, H, W)."""
    if images.ndim != 4 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"'{name}' must be an IMAGE batch [B, H, W, C]; got shape {tuple(images.shape)}")
    x = images.float().movedim(-1, 1)
    if not torch.isfinite(x).all():
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return cs.to_rgb(x.clamp(0, 1), name)


def _checkpoints() -> list[str]:
    """CLIP files, without the files of locked text towers kept in their own sub-folder (not loadable alone)."""
    towers = tuple(spec["folder"] + sep for spec in cs.LOCKED_TEXT_TOWERS.values() for sep in "/\\")
    return [f for f in folder_paths.get_filename_list(FOLDER) if not f.startswith(towers)]


class CLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANCLIPLoader",
            display_name="DiffuGAN CLIP Style Loader",
            category="DiffuGAN/CLIP Style",
            description=("Loads an open_clip model from models/clip_style: open_clip's open_clip_pytorch_model.bin "
                         "or a .safetensors. Nothing is downloaded. 'auto' reads the architecture from our "
                         "metadata, from an open_clip_config.json beside the file, or from the file name."),
            inputs=[
                io.Combo.Input("ckpt_name", options=_checkpoints(),
                               tooltip="A file in ComfyUI/models/clip_style (sub-folders from the hub layout work). "
                                       "The zoo ships diffugan-emoji-clip.safetensors."),
                io.Combo.Input("architecture", options=["auto"] + cs.architectures(), default="auto",
                               tooltip="open_clip architecture of the weights, e.g. ViT-B-32 for "
                                       "laion2b_s34b_b79k; 'auto' works for files with a config beside them."),
            ],
            outputs=[ClipType.Output(display_name="clip")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, architecture) -> bool | str:
        return missing_model_message(FOLDER, ckpt_name, "CLIP checkpoint", EXPECTED)

    @classmethod
    def execute(cls, ckpt_name, architecture) -> io.NodeOutput:
        name = "DiffuGAN CLIP Style Loader"
        path = model_file_or_error(FOLDER, ckpt_name, name, "CLIP checkpoint", EXPECTED)
        with node_errors(name), torch.inference_mode(False):  # plain tensors: style injection backpropagates
            model = cs.load_clip(path, architecture, [Path(d) for d in folder_paths.get_folder_paths(FOLDER)])
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        return io.NodeOutput(ClipModel(patcher, ckpt_name))


class StyleEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleEncode",
            display_name="DiffuGAN Style Encode",
            category="DiffuGAN/CLIP Style",
            description=("Fuses text prompts and reference images into one style embedding: the normalised weighted "
                         "mean of their unit CLIP embeddings, minus the negative prompt's direction, renormalised "
                         "onto the unit sphere. One prompt alone gives exactly its own embedding."),
            inputs=[
                ClipType.Input("clip"),
                io.String.Input("text", default="", multiline=True,
                                tooltip="One prompt per line; an optional weight after a bar: 'watercolor | 1.5'."),
                io.Image.Input("images", optional=True,
                               tooltip="Reference images (a batch: each image is one part). Any size; alpha is "
                                       "composited over white."),
                io.Float.Input("image_weight", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Weight of each reference image."),
                io.String.Input("negative", default="", multiline=True, optional=True,
                                tooltip="Prompts whose direction is subtracted (one per line, '| weight' allowed)."),
                io.Float.Input("negative_weight", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the negative prompts' weights."),
            ],
            outputs=[StyleType.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, clip, text, image_weight, negative_weight, images=None, negative="") -> io.NodeOutput:
        name = "DiffuGAN Style Encode"
        with node_errors(name):
            try:
                prompts = cs.parse_prompts(text)
                negatives = cs.parse_prompts(negative or "")
            except ValueError as e:
                raise ValueError(f"'text'/'negative': {e}") from None
            pixels = _images_nchw(images, "images") if images is not None else None
            if not prompts and pixels is None:
                raise ValueError("nothing to encode: type at least one prompt in 'text' or connect 'images'")
            model = clip.loaded()
            parts, embs, weights = [], [], []
            with torch.inference_mode():
                if prompts:
                    embs.append(model.encode_texts([p for p, _ in prompts]).cpu())
                    weights += [w for _, w in prompts]
                    parts += [{"kind": "text", "source": p, "weight": w} for p, w in prompts]
                if pixels is not None:
                    embs.append(model.encode_images(pixels).cpu())
                    weights += [image_weight] * pixels.shape[0]
                    parts += [{"kind": "image", "source": f"image {i}", "weight": image_weight}
                              for i in range(pixels.shape[0])]
                neg = model.encode_texts([p for p, _ in negatives]).cpu() if negatives else None
            neg_weights = [w * negative_weight for _, w in negatives]
            parts += [{"kind": "negative", "source": p, "weight": w} for (p, _), w in zip(negatives, neg_weights)]
            embedding = cs.fuse(torch.cat(embs), weights, neg, neg_weights)
        style = cs.StyleEmbedding(embedding, model.identity, parts)
        logging.info("%s: %s", name, style.describe())
        return io.NodeOutput(style)


class StyleMix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleMix",
            display_name="DiffuGAN Style Mix",
            category="DiffuGAN/CLIP Style",
            description="Blends two styles by spherical interpolation (slerp): 0 = style A, 1 = style B.",
            inputs=[
                StyleType.Input("style_a"),
                StyleType.Input("style_b"),
                io.Float.Input("mix", default=0.5, min=0.0, max=1.0, step=0.05),
            ],
            outputs=[StyleType.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, style_a, style_b, mix) -> io.NodeOutput:
        name = "DiffuGAN Style Mix"
        with node_errors(name):
            check_style(style_b.clip, style_a.clip, "'style_a' uses")
            embedding = cs.slerp(style_a.embedding, style_b.embedding, mix)
        parts = ([dict(p, weight=p["weight"] * (1 - mix)) for p in style_a.parts]
                 + [dict(p, weight=p["weight"] * mix) for p in style_b.parts])
        return io.NodeOutput(cs.StyleEmbedding(embedding, style_a.clip, parts))


class StyleInject(io.ComfyNode):
    MODES = ["clip_guided", "mapper"]

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANStyleInject",
            display_name="DiffuGAN StyleGAN Style Inject",
            category="DiffuGAN/StyleGAN",
            description=("Steers a draft's W+ toward a style: W+ out = W+ in + strength x offset (strength 0 returns "
                         "W+ unchanged). clip_guided optimises the offset so CLIP sees the style in the image "
                         "(StyleCLIP latent optimisation, needs 'clip'); mapper computes it in one pass with a "
                         "mapper trained by scripts/train_style_mapper.py for this generator and CLIP."),
            inputs=[
                StyleGANType.Input("stylegan"),
                WType.Input("w"),
                StyleType.Input("style"),
                io.Combo.Input("mode", options=cls.MODES, default="clip_guided"),
                io.Float.Input("strength", default=1.0, min=-2.0, max=4.0, step=0.05),
                ClipType.Input("clip", optional=True, tooltip="Needed by clip_guided: the CLIP that encoded the style."),
                io.Combo.Input("mapper", options=[NO_MAPPER] + folder_paths.get_filename_list(MAPPER_FOLDER),
                               default=NO_MAPPER, tooltip="Needed by mapper: a file in models/diffugan_mappers."),
                io.Int.Input("steps", default=20, min=1, max=500, tooltip="clip_guided: optimisation steps."),
                io.Float.Input("learning_rate", default=0.05, min=0.001, max=1.0, step=0.005,
                               tooltip="clip_guided: Adam step size in W units."),
                io.Float.Input("tether", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="clip_guided: L2 pull toward the input W; higher keeps more of the draft."),
                io.Combo.Input("noise_mode", options=NOISE_MODES, default="const"),
                io.Int.Input("noise_seed", default=0, min=0, max=2**32 - 1, tooltip="Used by noise_mode=random."),
            ],
            outputs=[io.Image.Output(display_name="image"), WType.Output(display_name="w")],
        )

    @classmethod
    def validate_inputs(cls, mapper=NO_MAPPER) -> bool | str:
        if mapper in (None, NO_MAPPER):
            return True
        return missing_model_message(MAPPER_FOLDER, mapper, "style mapper")

    @classmethod
    def execute(cls, stylegan, w, style, mode, strength, steps, learning_rate, tether, noise_mode, noise_seed,
                clip=None, mapper=NO_MAPPER) -> io.NodeOutput:
        name = "DiffuGAN StyleGAN Style Inject"
        ws = _check_w(stylegan, w, name)
        if strength == 0:
            return io.NodeOutput(_render(stylegan, ws, noise_mode, noise_seed), _w_payload(stylegan, ws))
        with node_errors(name):
            if mode == "clip_guided":
                delta = cls._clip_guided(stylegan, ws, style, clip, steps, learning_rate, tether, noise_mode)
            elif mode == "mapper":
                delta = cls._mapped(stylegan, ws, style, mapper, name)
            else:
                raise ValueError(f"unknown mode '{mode}'; use one of {cls.MODES}")
            out = ws + strength * delta
        return io.NodeOutput(_render(stylegan, out, noise_mode, noise_seed), _w_payload(stylegan, out))

    @staticmethod
    def _clip_guided(stylegan, ws, style, clip, steps, lr, tether, noise_mode) -> torch.Tensor:
        if clip is None:
            raise ValueError("mode clip_guided needs the 'clip' input: connect the CLIP loader that encoded the style")
        check_style(style.clip, clip.model.identity, "the 'clip' input uses")
        G, device, _ = _load_on_device(stylegan)
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
        path = model_file_or_error(MAPPER_FOLDER, mapper_name, "", "style mapper")
        m = cs.load_mapper(path)
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


NODES = [CLIPLoader, StyleEncode, StyleMix, StyleInject]
