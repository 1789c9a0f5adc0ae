"""Parity of models/var.py with FoundationVision/VAR's own code, on small random-weight checkpoints.

The weights are drawn here, deterministically (`fixture_state_dicts`: a seeded generator, FoundationVision's
parameter names, which models/var.py shares), and written as FoundationVision's files are: `torch.save` of a state
dict. This script loads them into the reference implementation — strictly, so every name and shape must be theirs —
runs it and stores what it computes in tests/models/var_reference.safetensors: the multi-scale indices of fixed
images, the images decoded after each scale, the teacher-forced logits, and full samples drawn with fixed
generators. tests/models/test_var.py rebuilds the same weights and compares models/var.py's outputs with them. The
reference code is run from a checkout given on the command line and never copied here.

    git clone https://github.com/FoundationVision/VAR /tmp/VAR     # (or any checkout of it)
    .venv/bin/python devkit/var_parity.py /tmp/VAR                 # -> tests/models/var_reference.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "models" / "var_reference.safetensors"
PATCH_NUMS = (1, 2, 3, 4)
VQVAE_KW = dict(vocab_size=64, z_channels=8, ch=32, share_quant_resi=4)
# two transformers: with L2-normalised attention (heads stored) as released, and without (heads from the name)
VAR_KW = {"l2": dict(depth=2, embed_dim=128, num_heads=4, num_classes=10, attn_l2_norm=True),
          "plain": dict(depth=2, embed_dim=128, num_heads=2, num_classes=10, attn_l2_norm=False)}
SAMPLES = [dict(seed=42, cfg=1.5, top_k=20, top_p=0.9), dict(seed=7, cfg=4.0, top_k=0, top_p=0.0)]
LABELS = [3, 7]


def _fill(sd: dict[str, torch.Tensor], gen: torch.Generator, keep: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k in sorted(sd):
        v = sd[k]
        if k.endswith(keep) or not v.is_floating_point():
            out[k] = v.clone()
        elif v.dim() >= 2 and not k.endswith(("pos_start", "pos_1LC", "class_emb.weight", "lvl_embed.weight",
                                                "embedding.weight", "scale_mul_1H11")):
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=gen) / fan_in ** 0.5
        elif k.endswith("scale_mul_1H11"):
            out[k] = v + 0.3 * torch.randn(v.shape, generator=gen)
        elif v.dim() == 1 and k.endswith("weight"):  # normalisation gains
            out[k] = 1 + 0.1 * torch.randn(v.shape, generator=gen)
        else:  # biases, embeddings, position tables
            out[k] = 0.2 * torch.randn(v.shape, generator=gen)
    return out


def fixture_state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    """{"vqvae": …, "var_l2": …, "var_plain": …}: FoundationVision-named state dicts, the same on every run."""
    from diffugan.models import var

    gen = torch.Generator().manual_seed(2404_02905)
    vq = var.VQVAE(var.VQVAEConfig(**VQVAE_KW, scales=len(PATCH_NUMS)))
    out = {"vqvae": _fill(vq.state_dict(), gen, ("ema_vocab_hit_SV",))}
    for name, kw in VAR_KW.items():
        model = var.VAR(var.VARConfig(**kw, vocab_size=VQVAE_KW["vocab_size"], z_channels=VQVAE_KW["z_channels"],
                                      patch_nums=PATCH_NUMS))
        out[f"var_{name}"] = _fill(model.state_dict(), gen, ("lvl_1L", "attn_bias_for_masking", "zero_k_bias"))
    return out


def fixture_images() -> torch.Tensor:
    """Two smooth random pictures in -1..1 at the tokenizer's size (16 × the last scale's side)."""
    g = torch.Generator().manual_seed(5)
    small = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(small, size=16 * PATCH_NUMS[-1], mode="bilinear", align_corners=False)


def write_checkpoints(folder: Path) -> dict[str, Path]:
    """The fixture's state dicts saved as FoundationVision's .pth files are (torch.save of a state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"vqvae": "vae_ch32v64z8.pth", "var_l2": "var_l2_tiny.pth", "var_plain": "var_d2.pth"}
    paths = {}
    for key, sd in fixture_state_dicts().items():
        paths[key] = folder / names[key]
        torch.save(sd, paths[key])
    return paths


def main(reference: Path) -> None:
    import tempfile

    from safetensors.torch import save_file

    sys.path.insert(0, str(reference))
    from models.var import VAR  # noqa: E402  (the reference implementation, from its checkout)
    from models.vqvae import VQVAE

    paths = write_checkpoints(Path(tempfile.mkdtemp()))
    vae = VQVAE(**VQVAE_KW, test_mode=True, v_patch_nums=PATCH_NUMS)
    vae.load_state_dict(torch.load(paths["vqvae"], weights_only=True), strict=True)
    x = fixture_images()
    out = {"images": x}
    with torch.no_grad():
        idx = vae.img_to_idxBl(x)
        for k, i in enumerate(idx):
            out[f"encode.{k}"] = i
        for k, img in enumerate(vae.idxBl_to_img(idx, same_shape=True, last_one=False)):
            out[f"decode_after.{k}"] = img
        for k, img in enumerate(vae.img_to_reconstructed_img(x, last_one=False)):
            out[f"reconstruct_after.{k}"] = img
        tf_input = vae.quantize.idxBl_to_var_input(idx)
        out["teacher_input"] = tf_input
        for name, kw in VAR_KW.items():
            model = VAR(vae_local=vae, num_classes=kw["num_classes"], depth=kw["depth"], embed_dim=kw["embed_dim"],
                        num_heads=kw["num_heads"], attn_l2_norm=kw["attn_l2_norm"], patch_nums=PATCH_NUMS,
                        cond_drop_rate=0.0, flash_if_available=False, fused_if_available=False).eval()
            model.load_state_dict(torch.load(paths[f"var_{name}"], weights_only=True), strict=True)
            out[f"{name}.logits"] = model(torch.tensor(LABELS), tf_input)
            for j, s in enumerate(SAMPLES):
                out[f"{name}.sample.{j}"] = model.autoregressive_infer_cfg(
                    B=len(LABELS), label_B=torch.tensor(LABELS), g_seed=s["seed"], cfg=s["cfg"], top_k=s["top_k"],
                    top_p=s["top_p"])
    from devkit import reference_commit

    save_file({k: v.contiguous() for k, v in out.items()}, str(FIXTURE),
              metadata={"reference": "FoundationVision/VAR", "commit": reference_commit(reference)})
    print(f"wrote {FIXTURE} ({len(out)} tensors)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import devkit  # noqa: F401  (registers the pack as the package `diffugan`)

    main(Path(sys.argv[1]).resolve())
