"""GANformer nodes (category DiffuGAN/GANformer): loader and generate (images plus the attention maps that say which
latent component owns each pixel).

Custom types: DIFFUGAN_GANFORMER (a loaded generator in ComfyUI's model management) and DIFFUGAN_GANFORMER_W (the
per-component latents ws plus the identity of the generator that made them, like DIFFUGAN_W; a GANformer's ws have
a component axis that StyleGAN's W+ has not, so the StyleGAN nodes refuse them).
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..models import ganformer as gf
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

FOLDER = "ganformer"
register_model_folder(FOLDER, {".pkl"})

GANformerType = io.Custom("DIFFUGAN_GANFORMER")
GANformerWType = io.Custom("DIFFUGAN_GANFORMER_W")
NOISE_MODES = ["const", "random", "none"]
CHUNK = 8  # images per forward pass: bounds memory, gives progress and interrupt points
BYTES_PER_PIXEL = 4096  # rough activation memory of one image per output pixel (convolutions and attention)
ALL_COMPONENTS = -1  # `component` value: the probability of each pixel's most likely component


@dataclass
class GANformerModel:
    """What flows on a DIFFUGAN_GANFORMER wire."""

    patcher: comfy.model_patcher.ModelPatcher
    name: str

    @property
    def generator(self) -> gf.Generator:
        return self.patcher.model

    @property
    def identity(self) -> str:
        G = self.generator
        return (f"{self.name} (GANformer, {G.img_resolution}px, k={G.k}, num_ws={G.num_ws}, "
                f"w_dim={G.w_dim})")


def load_on_device(model: GANformerModel) -> tuple[gf.Generator, torch.device]:
    mm.load_models_gpu([model.patcher])  # (no fp16: the reference's PyTorch GANformer has none)
    return model.generator, model.patcher.load_device


def latents(seeds: list[int], k: int, z_dim: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """z for each seed (exactly gf.z_from_seeds) and, per image, that seed's CPU random stream after its z: where
    noise_mode=random draws the image's noise, so an image depends on its own seed only (not on its place in a
    batch, nor on the device)."""
    streams = [torch.Generator().manual_seed(s) for s in seeds]
    z = torch.cat([torch.randn(1, k, z_dim, generator=g) for g in streams])
    return z, streams


def check_inputs(G: gf.Generator, truncation_psi: float, class_label: int, component: int,
                 style=None) -> torch.Tensor | None:
    """Refuse, naming the input, what this generator cannot do. Returns the label row: the prompt's embedding for a
    text-conditioned generator (zeros, its unprompted mode, without one), one-hot for a class-conditional one, or
    None."""
    if truncation_psi != 1 and not G.mapping.has_w_avg:
        raise ValueError(f"'truncation_psi' must be 1 for this generator (got {truncation_psi}): it tracks no average "
                         "w (trained with w_avg_beta=None), so there is nothing to truncate toward")
    local = G.k - 1
    if component != ALL_COMPONENTS and not 0 <= component < local:
        raise ValueError(f"'component' {component} is out of range: this generator has {local} local components "
                         f"(0..{local - 1}), or -1 for how clearly each pixel's most likely component owns it")
    if G.style_clip:
        if style is None:
            return torch.zeros(1, G.c_dim)
        check_style(style.clip, G.style_clip, "this generator was trained on")
        embedding = style.embedding.float().view(1, -1)
        if embedding.shape[1] != G.c_dim:
            raise ValueError(f"'style' has {embedding.shape[1]} dimensions but this generator's label has {G.c_dim}")
        return embedding
    if style is not None:
        raise ValueError("'style': this generator is not text-conditioned (it was not trained on CLIP embeddings); "
                         "disconnect it")
    if G.c_dim == 0:
        return None  # unconditional: class_label is ignored
    if not 0 <= class_label < G.c_dim:
        raise ValueError(f"'class_label' {class_label} is out of range: this generator has {G.c_dim} classes "
                         f"(0..{G.c_dim - 1})")
    return F.one_hot(torch.tensor([class_label]), G.c_dim).float()


def render(model: GANformerModel, ws: torch.Tensor, noise_mode: str, streams: list[torch.Generator]):
    """ws (N, k, num_ws, w_dim) -> IMAGE (N, H, W, 3) and the attention masks (N, k-1, H, W) of the last attention
    layer (heads averaged: gf.attention_masks), in chunks with progress and interrupt points. noise_mode=random
    renders image by image, each with its own seed's stream."""
    G, device = load_on_device(model)
    n = ws.shape[0]
    pbar = comfy.utils.ProgressBar(n)
    step = 1 if noise_mode == "random" else int(
        max(1, min(CHUNK, mm.get_free_memory(device) * 0.5 // (BYTES_PER_PIXEL * G.img_resolution ** 2))))
    images, masks = [], []
    for i in range(0, n, step):
        mm.throw_exception_if_processing_interrupted()
        chunk = ws[i:i + step].to(device)
        with torch.inference_mode():  # random noise is drawn on CPU from the seed: the same on every device
            img, attention = G.synthesis(chunk, G.pos, noise_mode=noise_mode, generator=streams[i],
                                         return_attention=True)
            masks.append(gf.attention_masks(attention).float().clamp(0, 1).to(mm.intermediate_device()))
        images.append(generated_to_image(img))
        pbar.update(chunk.shape[0])
    return torch.cat(images), torch.cat(masks)


def palette(n: int) -> torch.Tensor:
    """n distinct colours (n, 3) in 0..1: hues a golden angle apart (component i always gets the same colour)."""
    hue = (torch.arange(n, dtype=torch.float64) * 0.6180339887498949) % 1.0
    saturation, value = 0.7, 0.95
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue[:, None] * 6) % 6  # HSV -> RGB
    return (value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)).float()


def segments(masks: torch.Tensor) -> torch.Tensor:
    """Attention masks (N, k-1, H, W) -> IMAGE (N, H, W, 3): each pixel in its most likely component's colour."""
    return palette(masks.shape[1]).to(masks.device)[masks.argmax(dim=1)]


def component_mask(masks: torch.Tensor, component: int) -> torch.Tensor:
    """(N, k-1, H, W) -> MASK (N, H, W): one component's map, or (-1) each pixel's most likely component's
    probability."""
    return masks.amax(dim=1) if component == ALL_COMPONENTS else masks[:, component]


class GANformerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANGANformerLoader",
            display_name="DiffuGAN GANformer Loader",
            category="DiffuGAN/GANformer",
            description=("Loads a GANformer generator from models/ganformer: a training snapshot of "
                         "dorarad/gansformer's PyTorch version (network-snapshot-*.pkl; its EMA generator Gs is used, "
                         "or G in a snapshot without one) or one of its TensorFlow network pickles (Gs, converted on "
                         "load); read without executing the code either carries."),
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in ComfyUI/models/ganformer")],
            outputs=[GANformerType.Output(display_name="ganformer")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        return missing_model_message(FOLDER, ckpt_name, "GANformer snapshot", gf.SUPPORTED)

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        name = "DiffuGAN GANformer Loader"
        G = load_model_file(FOLDER, ckpt_name, name, "GANformer snapshot", gf.load_ganformer, gf.SUPPORTED)
        return io.NodeOutput(GANformerModel(managed(G), ckpt_name))


class GANformerGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANGANformerGenerate",
            display_name="DiffuGAN GANformer Generate",
            category="DiffuGAN/GANformer",
            description=("Draws a batch of drafts from consecutive seeds (seed, seed+1, …) with a GANformer, and shows "
                         "how its latent components divide each image: 'attention' is a MASK (one component's "
                         "attention, or how clearly each pixel is owned) usable as the importance of DiT Refine, "
                         "'segments' colours each pixel by the component that owns it. Maps are from the last "
                         "attention layer, heads averaged, at the image size. Also outputs the latents ws (not "
                         "accepted by the StyleGAN nodes)."),
            inputs=[
                GANformerType.Input("ganformer", tooltip="A GANformer from DiffuGAN GANformer Loader."),
                io.Int.Input("seed", default=0, min=0, max=2**32 - 1, control_after_generate=True,
                             tooltip="Seed of the latents z (image i of a batch uses seed + i, so an image of a "
                                     "batch is the image of its own seed alone); also seeds noise_mode=random."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of drafts."),
                io.Float.Input("truncation_psi", default=0.7, min=-1.0, max=2.0, step=0.05,
                               tooltip="'Temperature': 1 = full variety, 0 = the average image, 0.5–0.8 = typical. "
                                       "Pulls every component's w toward the average w. Generators trained without "
                                       "an average w take only 1."),
                io.Int.Input("truncation_cutoff", default=0, min=0, max=64,
                             tooltip="Truncate only the first N style layers (coarse structure); 0 = all layers."),
                io.Combo.Input("noise_mode", options=NOISE_MODES, default="const",
                               tooltip="Per-pixel noise: const (stored in the generator), random (drawn from each "
                                       "image's seed: reproducible), none."),
                io.Int.Input("class_label", default=0, min=0, max=100000,
                             tooltip="Class for conditional generators (0 … classes-1); ignored by unconditional "
                                     "ones."),
                StyleType.Input("style", optional=True,
                                tooltip="For a text-conditioned GANformer (such as one trained by "
                                        "scripts/train_zoo_ganformer.py): the prompt, from DiffuGAN Style Encode with "
                                        "the CLIP it was trained on. Without it, it draws unprompted."),
                io.Int.Input("component", default=ALL_COMPONENTS, min=ALL_COMPONENTS, max=255,
                             tooltip="Which map the 'attention' output gives: a local component's attention "
                                     "(0 … k-2: how much each pixel belongs to it), or -1: per pixel, the "
                                     "probability of its most likely component (1 where one component clearly owns "
                                     "the pixel, low on the borders between them; invert it with InvertMask to "
                                     "refine the borders). The 'segments' output shows which number is where."),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                GANformerWType.Output(display_name="w",
                                      tooltip="The latents ws (N, k components with the global one last, layers, "
                                              "w_dim) and the generator that made them. Not a StyleGAN W+: the "
                                              "StyleGAN nodes (Style Mix, From W, Style Inject) do not accept it."),
                io.Mask.Output(display_name="attention",
                               tooltip="The map chosen by 'component', at the image size, 0..1: connect it as the "
                                       "importance of DiffuGAN DiT Refine."),
                io.Image.Output(display_name="segments",
                                tooltip="Each pixel in the colour of its most likely component (a fixed colour per "
                                        "component)."),
            ],
        )

    @classmethod
    def execute(cls, ganformer, seed, batch_size, truncation_psi, truncation_cutoff, noise_mode, class_label,
                component, style=None) -> io.NodeOutput:
        name = "DiffuGAN GANformer Generate"
        G = ganformer.generator
        with node_errors(name):
            label = check_inputs(G, truncation_psi, class_label, component, style)
            if noise_mode not in NOISE_MODES:
                raise ValueError(f"'noise_mode' must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
            seeds = [(seed + i) % 2**32 for i in range(batch_size)]
            z, streams = latents(seeds, G.k, G.z_dim)
            G, device = load_on_device(ganformer)
            c = label.expand(batch_size, -1).to(device) if label is not None else None
            with torch.inference_mode():
                ws = G.mapping(z.to(device), c, G.pos, truncation_psi=truncation_psi,
                               truncation_cutoff=truncation_cutoff or None)
            image, masks = render(ganformer, ws, noise_mode, streams)
        w = {"ws": ws.detach().float().cpu(), "model": ganformer.identity}
        return io.NodeOutput(image, w, component_mask(masks, component), segments(masks))


NODES = [GANformerLoader, GANformerGenerate]
