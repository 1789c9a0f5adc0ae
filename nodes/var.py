"""VAR nodes (category DiffuGAN/VAR): loader, draft (scale by scale, stopping at any scale), encode.

Custom types: DIFFUGAN_VAR (a loaded VQVAE + transformer pair in ComfyUI's model management) and DIFFUGAN_VAR_TOKENS
(an image's index maps, one per scale, plus the identity of the VQVAE that made them, so another tokenizer refuses
them with a clear error).
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

from ..models import var as vm
from ._common import (
    StyleType,
    check_style,
    image_to_nchw,
    load_model_file,
    managed,
    missing_model_message,
    nchw_to_image,
    node_errors,
    register_model_folder,
)

FOLDER = "var"
register_model_folder(FOLDER, {".pth", ".pt", ".bin", ".ckpt", ".safetensors"})

VARType = io.Custom("DIFFUGAN_VAR")
TokensType = io.Custom("DIFFUGAN_VAR_TOKENS")
CHUNK = 8  # images per pass: bounds memory


@dataclass
class VARModel:
    """What flows on a DIFFUGAN_VAR wire: the tokenizer and the transformer, managed together."""

    patcher: comfy.model_patcher.ModelPatcher
    vqvae_name: str
    var_name: str

    @property
    def vqvae(self) -> vm.VQVAE:
        return self.patcher.model["vqvae"]

    @property
    def transformer(self) -> vm.VAR:
        return self.patcher.model["var"]

    @property
    def tokenizer_identity(self) -> str:
        c = self.vqvae.config
        return f"{self.vqvae_name} (VQVAE, {c.vocab_size} codes of width {c.z_channels})"

    @property
    def size(self) -> int:
        """The image side the pair works at."""
        return self.transformer.config.patch_nums[-1] * self.vqvae.config.downsample


class VARLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list(FOLDER)
        return io.Schema(
            node_id="DiffuGANVARLoader",
            display_name="DiffuGAN VAR Loader",
            category="DiffuGAN/VAR",
            description=("Loads a VAR (next-scale prediction) pair from models/var: the multi-scale VQVAE tokenizer "
                         "and the transformer trained on its codes — FoundationVision's vae_ch160v4096z32.pth with "
                         "var_d16.pth … var_d30.pth (read as weights only, strictly), or the zoo's .safetensors."),
            inputs=[io.Combo.Input("vqvae_name", options=files, tooltip="The tokenizer: a file in ComfyUI/models/var"),
                    io.Combo.Input("var_name", options=files,
                                   tooltip="The transformer: a file in ComfyUI/models/var"),
                    io.Int.Input("num_heads", default=0, min=0, max=256,
                                 tooltip="0: read from the file (or its name, var_d<depth>); set it only for a "
                                         "transformer without L2 attention whose name does not say")],
            outputs=[VARType.Output(display_name="var")],
        )

    @classmethod
    def validate_inputs(cls, vqvae_name, var_name, num_heads=0) -> bool | str:
        for name, what in ((vqvae_name, "VAR VQVAE"), (var_name, "VAR transformer")):
            msg = missing_model_message(FOLDER, name, what)
            if msg is not True:
                return msg
        return True

    @classmethod
    def execute(cls, vqvae_name, var_name, num_heads=0) -> io.NodeOutput:
        node = "DiffuGAN VAR Loader"
        vq = load_model_file(FOLDER, vqvae_name, node, "VAR VQVAE", vm.load_vqvae)
        tr = load_model_file(FOLDER, var_name, node, "VAR transformer",
                             lambda p: vm.load_var(p, num_heads=num_heads or None))
        with node_errors(node):
            vm.check_pair(vq, tr, f"{var_name} / {vqvae_name}: ")
        pair = torch.nn.ModuleDict({"vqvae": vq, "var": tr})
        return io.NodeOutput(VARModel(managed(pair), vqvae_name, var_name))


def _conditioning(model: VARModel, class_label: int, style, batch: int, gen: torch.Generator):
    """(labels (B,), styles (B, D) or None): a style for a style-conditioned zoo VAR (null class), else the class;
    class -1: a class per image drawn from the seed (as FoundationVision's sampler does without a label)."""
    c = model.transformer.config
    if style is not None:
        if not c.style_dim:
            raise ValueError("this VAR transformer takes class labels, not a 'style': disconnect it and choose "
                             "class_label")
        check_style(style.clip, getattr(model.transformer, "style_clip", ""), "this VAR was trained on")
        embedding = style.embedding.float().view(1, -1)
        if embedding.shape[1] != c.style_dim:
            raise ValueError(f"the style has {embedding.shape[1]} dimensions but this VAR expects {c.style_dim}: "
                             "encode it with the CLIP the VAR was trained with")
        return torch.full((batch,), c.num_classes), embedding.expand(batch, -1)
    if c.num_classes == 0:  # a style-only zoo VAR without a style: unconditional
        return torch.full((batch,), 0), None
    if class_label >= c.num_classes:
        raise ValueError(f"class_label {class_label} is outside this VAR's classes 0…{c.num_classes - 1} "
                         "(-1: a random class per image)")
    if class_label < 0:
        return torch.randint(0, c.num_classes, (batch,), generator=gen), None
    return torch.full((batch,), class_label), None


def _check_tokens(model: VARModel, tokens, node: str) -> list[torch.Tensor]:
    idx = tokens.get("indices") if isinstance(tokens, dict) else None
    if not isinstance(idx, list) or not idx or not all(isinstance(i, torch.Tensor) for i in idx):
        raise ValueError(f"{node}: 'tokens' is not a VAR token set (connect DiffuGAN VAR Encode's 'tokens')")
    if tokens.get("model") != model.tokenizer_identity:
        raise ValueError(f"{node}: 'tokens' were made by {tokens.get('model')}, not by this pair's "
                         f"{model.tokenizer_identity}: encode the image with the same VAR")
    pns = model.transformer.config.patch_nums
    if any(i.ndim != 2 or i.shape[1] != p * p for i, p in zip(idx, pns)) or len(idx) > len(pns):
        raise ValueError(f"{node}: 'tokens' do not have this VAR's scales {pns}: encode the image with this VAR pair")
    return idx


class VARDraft(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANVARDraft",
            display_name="DiffuGAN VAR Draft",
            category="DiffuGAN/VAR",
            description=("Draws images scale by scale (1×1 tokens up to the last scale), each scale predicted from all "
                         "coarser ones. 'stop_scale' stops early: the image of the tokens so far, decoded at full "
                         "size — a coarse draft for a refiner, in a fraction of the time. With 'tokens' from VAR "
                         "Encode, the first 'keep_scales' scales are kept and only the finer ones are drawn."),
            inputs=[
                VARType.Input("var", tooltip="From DiffuGAN VAR Loader."),
                io.Int.Input("class_label", default=207, min=-1, max=100000,
                             tooltip="ImageNet class for FoundationVision's models (207: golden retriever); -1: a "
                                     "random class per image. Ignored when a style is connected."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance, ramped from 0 at the first scale to this at the "
                                       "last (VAR's own schedule)."),
                io.Int.Input("top_k", default=900, min=0, max=100000,
                             tooltip="Draw each token among the k likeliest codes (0: all)."),
                io.Float.Input("top_p", default=0.95, min=0.0, max=1.0, step=0.01,
                               tooltip="…and among the fewest whose probability reaches p (0: all)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the token draws (and of the classes when class_label is -1)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images."),
                io.Int.Input("stop_scale", default=0, min=0, max=64,
                             tooltip="Scales to draw (0: all). The image is always decoded at full size."),
                StyleType.Input("style", optional=True,
                                tooltip="For a style-conditioned zoo VAR: the prompt from DiffuGAN Style Encode."),
                TokensType.Input("tokens", optional=True, tooltip="From DiffuGAN VAR Encode: scales to keep."),
                io.Int.Input("keep_scales", default=0, min=0, max=64, optional=True,
                             tooltip="How many of the tokens' coarsest scales to keep (with 'tokens')."),
            ],
            outputs=[io.Image.Output(display_name="image"), TokensType.Output(display_name="tokens")],
        )

    @classmethod
    def execute(cls, var, class_label, cfg, top_k, top_p, seed, batch_size, stop_scale, style=None, tokens=None,
                keep_scales=0) -> io.NodeOutput:
        node = "DiffuGAN VAR Draft"
        model = var
        n = len(model.transformer.config.patch_nums)
        if stop_scale > n:
            raise ValueError(f"{node}: stop_scale {stop_scale} is beyond this VAR's {n} scales (0: all)")
        keep = None
        if tokens is not None and keep_scales:
            idx = _check_tokens(model, tokens, node)
            if keep_scales > len(idx):
                raise ValueError(f"{node}: keep_scales {keep_scales} but the tokens hold {len(idx)} scales")
            b = idx[0].shape[0]
            if b not in (1, batch_size):
                raise ValueError(f"{node}: the tokens hold {b} images but batch_size is {batch_size}: encode one "
                                 "image (it is repeated) or as many as the batch")
            keep = [i.expand(batch_size, -1) for i in idx[:keep_scales]]
        stop = stop_scale or n
        with node_errors(node):
            mm.load_models_gpu([model.patcher])
            device = model.patcher.load_device
            gen = torch.Generator().manual_seed(seed)  # draws on the CPU: the same images on every device
            labels, styles = _conditioning(model, class_label, style, batch_size, torch.Generator().manual_seed(seed))
            chunks = list(range(0, batch_size, CHUNK))
            pbar = comfy.utils.ProgressBar(len(chunks) * stop)
            images, maps = [], []
            for c, start in enumerate(chunks):
                sl = slice(start, start + CHUNK)

                def progress(done, total, c=c):
                    mm.throw_exception_if_processing_interrupted()
                    pbar.update_absolute(c * stop + done)

                with torch.inference_mode():
                    img, got = model.transformer.sample(
                        model.vqvae, labels[sl].to(device), gen, cfg, top_k, top_p,
                        None if styles is None else styles[sl].to(device), stop,
                        None if keep is None else [k[sl] for k in keep], progress)
                images.append(nchw_to_image(img.float().clamp(0, 1)).to(mm.intermediate_device()))
                maps.append([g.cpu() for g in got])
        indices = [torch.cat([m[k] for m in maps]) for k in range(len(maps[0]))]
        return io.NodeOutput(torch.cat(images), {"indices": indices, "model": model.tokenizer_identity})


class VAREncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANVAREncode",
            display_name="DiffuGAN VAR Encode",
            category="DiffuGAN/VAR",
            description=("Turns images into VAR's multi-scale tokens (one index map per scale, coarse to fine), so "
                         "VAR Draft can keep an image's coarse scales and redraw the fine ones. Images are resized "
                         "to the pair's size (256 px for FoundationVision's models)."),
            inputs=[VARType.Input("var", tooltip="From DiffuGAN VAR Loader."),
                    io.Image.Input("image", tooltip="Images to encode (resized to the pair's size).")],
            outputs=[TokensType.Output(display_name="tokens"), io.Image.Output(display_name="reconstruction")],
        )

    @classmethod
    def execute(cls, var, image) -> io.NodeOutput:
        node = "DiffuGAN VAR Encode"
        model = var
        x = image_to_nchw(image, "image")
        with node_errors(node):
            if x.shape[-2:] != (model.size, model.size):
                x = F.interpolate(x, size=(model.size, model.size), mode="bicubic", antialias=True,
                                  align_corners=False)
            mm.load_models_gpu([model.patcher])
            device = model.patcher.load_device
            idx, recon = [], []
            with torch.inference_mode():
                for start in range(0, x.shape[0], CHUNK):
                    mm.throw_exception_if_processing_interrupted()
                    chunk = (x[start:start + CHUNK].clamp(0, 1) * 2 - 1).to(device)
                    got = model.vqvae.encode(chunk, model.transformer.config.patch_nums)
                    idx.append([g.cpu() for g in got])
                    recon.append(nchw_to_image(model.vqvae.decode(got).float().add(1).mul(0.5)).cpu())
        indices = [torch.cat([m[k] for m in idx]) for k in range(len(idx[0]))]
        return io.NodeOutput({"indices": indices, "model": model.tokenizer_identity}, torch.cat(recon))


NODES = [VARLoader, VARDraft, VAREncode]
