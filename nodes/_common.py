"""Small helpers shared by the node adapters: type conversion and people-facing errors."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from comfy_api.latest import io

from ..models.importance import check_finite

# DIFFUGAN_STYLE carries a models.clip_style.StyleEmbedding; every model that takes one checks its CLIP (check_style)
StyleType = io.Custom("DIFFUGAN_STYLE")


def image_to_nchw(image, name: str = "image", alpha_over_white: bool = False) -> torch.Tensor:
    """ComfyUI IMAGE (B,H,W,C) -> float RGB (B,3,H,W), checked: a batch of at least one image of at least 1x1
    pixels, finite values. Grey (C=1) is repeated to RGB and an alpha channel (grey + alpha C=2, RGBA C=4) is
    dropped, as ComfyUI's own image nodes do (or composited over white: `alpha_over_white`); anything else is
    refused naming the input."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"'{name}' is not an IMAGE (got {type(image).__name__}); connect an image output to it")
    if image.ndim != 4 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"'{name}' must be an IMAGE batch [B, H, W, C] with 1 to 4 channels; got shape "
                         f"{tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"'{name}' is empty (shape {tuple(image.shape)}): it holds no pixels; check the node that "
                         "made it (an empty batch or a crop of size 0)")
    x = image.float()
    check_finite(name, x)
    if x.shape[-1] in (2, 4):  # with alpha
        colour, alpha = x[..., :-1], x[..., -1:]
        x = colour * alpha + (1 - alpha) if alpha_over_white else colour
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.movedim(-1, 1)


def nchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> ComfyUI IMAGE (B,H,W,C), float32 on the intermediate (CPU) side."""
    return x.movedim(1, -1).float().contiguous()


def generated_to_image(img: torch.Tensor) -> torch.Tensor:
    """A generator's output (N, C, H, W) in [-1, 1] (grey: C=1; extra channels dropped) -> IMAGE (N, H, W, 3) in
    [0, 1] on the intermediate device."""
    import comfy.model_management as mm

    img = (img.float() * 0.5 + 0.5).clamp(0, 1)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return nchw_to_image(img[:, :3]).to(mm.intermediate_device())


def mask_to_n1hw(mask, name: str = "mask") -> torch.Tensor:
    """ComfyUI MASK ([B,]H,W) -> float (B,1,H,W), checked: at least one map of at least 1x1, finite values."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"'{name}' is not a MASK (got {type(mask).__name__}); connect a mask output to it")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:  # already (B,1,H,W) (some packs pass this)
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"'{name}' must be a MASK [B, H, W]; got shape {tuple(mask.shape)}")
    if mask.numel() == 0:
        raise ValueError(f"'{name}' is empty (shape {tuple(mask.shape)}); check the node that made it")
    m = mask.float()
    check_finite(name, m)
    return m.unsqueeze(1)


def same_clip(a: str, b: str) -> bool:
    """CLIP identities are 'arch #fingerprint'; the fingerprint (of the weights) decides, not the label."""
    return a.rsplit("#", 1)[-1] == b.rsplit("#", 1)[-1]


def check_style(style_clip: str, expected: str, what: str) -> None:
    """Refuse a style (encoded by CLIP `style_clip`) where `what` uses or was trained on CLIP `expected`."""
    if not same_clip(style_clip, expected):
        raise ValueError(f"the style was encoded by CLIP {style_clip}, but {what} CLIP {expected}: encode the style "
                         "with that CLIP")


@contextlib.contextmanager
def node_errors(display_name: str):
    """Re-raise a model-side ValueError with the node's name in front, so the user knows where to look."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{display_name}: {e}") from None


# The demo model zoo shipped with the pack (zoo/<folder>/): searched after the user's own folders, so its models
# are there by default and a user's file of the same name wins.
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Register ComfyUI/models/<name> (plus any paths extra_model_paths.yaml already gave it) for our files, and the
    zoo's folder of that name last."""
    import os

    import folder_paths

    default = os.path.join(folder_paths.models_dir, name)
    paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(extensions))
    add_zoo_folder(name)


def add_zoo_folder(name: str) -> None:
    """Let ComfyUI's folder `name` (ours or a stock one such as "vae") also list the zoo's zoo/<name>/ files."""
    import folder_paths

    zoo = ZOO_DIR / name
    if zoo.is_dir():
        folder_paths.add_model_folder_path(name, str(zoo), is_default=False)


def model_file_or_error(folder: str, file_name: str, node: str, what: str, expected: str = "") -> str:
    """Full path of a model file, or an error that names the folder(s) to put it in (and, given `expected`, which
    files belong there)."""
    import folder_paths

    path = folder_paths.get_full_path(folder, file_name) if file_name else None
    if path is None:
        places = ", ".join(folder_paths.get_folder_paths(folder))
        available = folder_paths.get_filename_list(folder)
        raise ValueError(
            (f"{node}: " if node else "")
            + f"{what} '{file_name}' not found. Put it in the '{folder}' model folder ({places})"
            + (f"; found there: {', '.join(available[:10])}" if available else "; that folder is empty")
            + (f". Expected: {expected}" if expected else "")
            + _how_to_get(folder, file_name)
        )
    return path


def _how_to_get(folder: str, file_name: str) -> str:
    """Where a missing file comes from: the pack's zoo (zoo/manifest.json), or the download command of
    scripts/download_models.py's catalog (loaded by path: a stdlib-only script users run on its own)."""
    import importlib.util
    import json
    import sys

    try:
        shipped = {f["path"] for f in json.loads((ZOO_DIR / "manifest.json").read_text())["files"]}
    except (OSError, ValueError, KeyError):
        shipped = set()
    if f"{folder}/{file_name}" in shipped:
        return f". It ships with the pack in {ZOO_DIR / folder}: reinstall or update the pack to get it back"
    script = ZOO_DIR.parent / "scripts" / "download_models.py"
    try:
        catalog = sys.modules.get("diffugan_download_models")
        if catalog is None:  # Python's recipe for importing a source file directly
            spec = importlib.util.spec_from_file_location("diffugan_download_models", script)
            catalog = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = catalog
            spec.loader.exec_module(catalog)
        entry = next((e for e in catalog.CATALOG.values() if e.folder == folder and e.file == file_name), None)
    except (OSError, ImportError, AttributeError):
        return ""
    if entry is None:
        return ""
    import shlex

    import folder_paths

    return (f". Download it ({entry.what}) with: python {shlex.quote(str(script))} {entry.name} --models-dir "
            f"{shlex.quote(folder_paths.models_dir)}   (or from {entry.url})")


def load_model_file(folder: str, file_name: str, node: str, what: str, load, expected: str = ""):
    """What every loader node does: find the file (or say which folder it belongs in), then `load(path)` with a
    model-side ValueError turned into one that names the node. Outside inference mode, so the loaded weights are
    plain tensors (Style Inject backpropagates through the StyleGAN and CLIP)."""
    path = model_file_or_error(folder, file_name, node, what, expected)
    with node_errors(node), torch.inference_mode(False):
        return load(path)


def managed(model: torch.nn.Module):
    """A loaded model in ComfyUI's model management (loaded to the torch device when used, offloaded per
    --lowvram / --cpu), as every loader node returns it."""
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def missing_model_message(folder: str, file_name: str, what: str, expected: str = "") -> str | bool:
    """For validate_inputs: True if the file exists, else the message that says where to put it."""
    try:
        model_file_or_error(folder, file_name, "", what, expected)
        return True
    except ValueError as e:
        return str(e)


# Example inputs the shipped workflows load (example_inputs/, drawn by scripts/example_inputs.py).
EXAMPLE_INPUTS = Path(__file__).resolve().parent.parent / "example_inputs"


def install_example_inputs() -> list[str]:
    """Copy the pack's example images into ComfyUI's input folder, where the stock LoadImage lists them, so the
    shipped workflows run on a fresh install. A file of the same name already there (the user's, or an earlier
    copy) is left as it is. Returns the names copied."""
    import logging
    import shutil

    import folder_paths

    dest = Path(folder_paths.get_input_directory())
    copied = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(EXAMPLE_INPUTS.glob("*.png")):
            if not (dest / src.name).exists():
                tmp = dest / f".{src.name}.diffugan-tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(dest / src.name)  # never a half-copied picture under the real name
                copied.append(src.name)
    except OSError as e:  # a read-only input folder: the workflows then name files the user must add
        logging.warning("DiffuGAN: could not copy the example inputs into %s (%s); the shipped workflows that load "
                        "them need them there (they are in %s)", dest, e, EXAMPLE_INPUTS)
    if copied:
        logging.info("DiffuGAN: copied example inputs into %s: %s", dest, ", ".join(copied))
    return copied
