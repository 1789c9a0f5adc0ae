"""Measure the zoo's coarse-to-fine pipeline on the held-out captions: does refining the StyleGAN drafts help?

For each of the 380 held-out captions (the data set's own caption): the zoo StyleGAN draws a draft steered by the
caption's zoo-CLIP embedding (truncation --psi toward the prompt's mean w, as the Generate node does), upsampled to
128 px; the zoo VAE encodes it; the zoo DiT refines it with the same prompt (dense Euler img2img at --strength, the
schedule the region-adaptive sampler spends on its most important regions, guidance --cfg); the VAE decodes it.
Judged by the zoo CLIP (train_zoo_clip.judge_text_to_image): CLIP score with the caption and Fréchet distance of
CLIP image features to the held-out images, for the draft, the draft through the VAE alone (what the latent round
trip costs) and the refined draft. The refinement gain is refined minus VAE round trip.

    python scripts/eval_zoo_pipeline.py        # -> zoo/pipeline.json (the zoo card reads it)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import train_zoo_clip as tzc  # noqa: E402
import train_zoo_stylegan as tzs  # noqa: E402
import zoo_data  # noqa: E402
from download_models import sha256_of  # noqa: E402

from diffugan.models import clip_style as cs  # noqa: E402
from devkit import sampling  # noqa: E402
from diffugan.models import dit, taesd  # noqa: E402
from diffugan.models import stylegan as sg  # noqa: E402

ZOO = ROOT / "zoo"


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--stylegan", type=Path, default=ZOO / "stylegan" / "diffugan-emoji-stylegan.safetensors")
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--dit", type=Path, default=ZOO / "dit" / "diffugan-emoji-dit.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae.safetensors")
    ap.add_argument("--out", type=Path, default=ZOO / "pipeline.json")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=20, help="refinement steps (the workflow's Refine: max_steps 20)")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    G, clip = sg.load_stylegan(args.stylegan), cs.load_clip(args.clip)
    model, vae = dit.load_dit(args.dit), taesd.load_vae(args.vae)
    n = len(zoo_data.load(args.data, "heldout")[1])
    sigmas, ts = sampling.img2img_schedule(args.steps, args.strength)
    null = torch.full((n,), model.config.null_class, dtype=torch.long)
    style = tzc.heldout_captions(clip, args.data)
    draft = tzs.sample_images(G, style, n, args.seed, args.psi)
    draft = F.interpolate(draft, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    z = torch.cat([vae.encode(draft[i:i + 64] * 2 - 1) for i in range(0, n, 64)]) * taesd.SD1_SCALE
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
    refined = torch.cat([sampling.euler_img2img(model, z[i:i + 64], null[i:i + 64], sigmas, ts, args.cfg,
                                                noise[i:i + 64], style=style[i:i + 64])[0] for i in range(0, n, 64)])
    stages = {"draft": draft, "vae": _decode(vae, z), "refined": _decode(vae, refined)}
    results = {"settings": {k: str(v) for k, v in vars(args).items()},
               "sha256": {k: sha256_of(getattr(args, k)) for k in ("stylegan", "clip", "dit", "vae")}}
    for name, images in stages.items():
        results[name] = tzc.judge_text_to_image(clip, args.data, lambda _: images, unconditional=False)
        results[name].pop("samples")
    for key in ("prompt_clip_score", "prompt_fd"):
        results[f"gain_{key}"] = results["refined"][key] - results["vae"][key]
    tzc.save_grid(torch.cat([stages[k][:8] for k in stages]), args.out.with_suffix(".png"))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name in ("draft", "vae", "refined"):
        r = results[name]
        print(f"{name:8s} CLIP score {r['prompt_clip_score']:.3f}  FD {r['prompt_fd']:.3f}")
    print(f"wrote {args.out}")


def _decode(vae: taesd.TinyAutoencoder, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(z[i:i + 64] / taesd.SD1_SCALE).clamp(-1, 1) * 0.5 + 0.5 for i in range(0, len(z), 64)])


if __name__ == "__main__":
    main()
