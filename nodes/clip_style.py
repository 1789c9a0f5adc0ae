"""CLIP style nodes: loader, Style Encode, Style Mix (category DiffuGAN/CLIP Style). Style Inject, which steers a
StyleGAN draft's W+ toward a style, is a StyleGAN node: nodes/style_inject.py.

Custom types: DIFFUGAN_CLIP (an open_clip model in ComfyUI's model management) and DIFFUGAN_STYLE (a unit style
embedding with its parts and the identity of the CLIP that made it, so a stage refuses an embedding from another
CLIP with a clear error).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..models import clip_style as cs
from ._common import (
    StyleType,
    check_style,
    image_to_nchw,
    load_model_file,
    managed,
    missing_model_message,
    node_errors,
    register_model_folder,
)

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
        towers = [Path(d) for d in folder_paths.get_folder_paths(FOLDER)]
        model = load_model_file(FOLDER, ckpt_name, name, "CLIP checkpoint",
                                lambda path: cs.load_clip(path, architecture, towers), EXPECTED)
        return io.NodeOutput(ClipModel(managed(model), ckpt_name))


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
                ClipType.Input("clip", tooltip="The CLIP that encodes prompts and images (CLIP Style Loader)."),
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
            pixels = (image_to_nchw(images, "images", alpha_over_white=True).clamp(0, 1) if images is not None
                      else None)
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
                StyleType.Input("style_a", tooltip="The style at mix 0."),
                StyleType.Input("style_b", tooltip="The style at mix 1 (encoded by the same CLIP as style_a)."),
                io.Float.Input("mix", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="0 gives style_a, 1 style_b; between, a blend on the unit sphere."),
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


NODES = [CLIPLoader, StyleEncode, StyleMix]
