"""Measure the zoo's coarse-to-fine pipeline on held-out data: does refining improve what it is given?

1. Drafts. For each held-out caption (the data set's own caption): the zoo StyleGAN draws a draft steered by the
   caption's zoo-CLIP embedding (truncation --psi toward the prompt's mean w, as the Generate node does), upsampled to
   the DiT's working size; the zoo VAE encodes it; the zoo DiT refines it with the same prompt (dense Euler img2img at
   --strength, the schedule the region-adaptive sampler spends on its most important regions, guidance --cfg); then
   decoded as the workflow's DiffuGAN Decode Refinement does: the draft plus what the refiner changed,
   decode(refined) - decode(the draft's latent), so the VAE's round-trip error cancels ("refined"; the plain VAE
   Decode of the refined latent is "refined_plain"); with --keep-coarse PX the draft's content below PX pixels is
   put back (a Keep Coarse node after the refine, which the text_to_image_hybrid workflow does not have). Judged by
   the zoo CLIP (train_zoo_clip.judge_text_to_image): CLIP score with the caption, the share of images whose CLIP
   score with their caption is at least their draft's (the demo's "closer to the prompt", per image), and Fréchet
   distance of CLIP image features to the held-out images; and a detail measure: the high-frequency energy (mean
   squared difference to a Gaussian-blurred copy, sigma 1.5 px at the working size) as a ratio to that of the
   real held-out images (1 = as detailed as real emoji; a blurry draft is below 1).
2. Degraded real images. The held-out images themselves, downscaled to --degrade-px and back up (blurred, as a
   coarse draft is), refined the same way with their caption but at --restore-strength (refine_any_image's): PSNR
   and SSIM (kornia) to the originals and the same detail ratio, for the degraded input, its VAE round trip, the
   refined image decoded plainly ("refined") and by Decode Refinement ("refined_added"), and for the round trip and
   the plain refined with the input's content at --degrade-px put back (Keep Coarse, as the refine_any_image
   workflow does).
Each figure for the input, the VAE round trip alone (what the latent round trip costs) and the refined image; the
refinement gain is refined minus VAE round trip.

    python scripts/eval_zoo_pipeline.py        # -> zoo/pipeline.json (the zoo card reads it) + pipeline.png
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
import train_zoo_dit as tzd  # noqa: E402
import train_zoo_stylegan as tzs  # noqa: E402
import zoo_data  # noqa: E402
from download_models import sha256_of  # noqa: E402

from diffugan.models import clip_style as cs  # noqa: E402
from devkit import metrics, sampling  # noqa: E402
from diffugan.models import dit, region, taesd  # noqa: E402
from diffugan.models import stylegan as sg  # noqa: E402

ZOO = ROOT / "zoo"


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--stylegan", type=Path, default=ZOO / "stylegan" / "diffugan-emoji-stylegan.safetensors")
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--dit", type=Path, default=ZOO / "dit" / "diffugan-emoji-dit-256.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    ap.add_argument("--out", type=Path, default=ZOO / "pipeline.json")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--strength", type=float, default=0.1, help="the text_to_image_hybrid workflow's Refine")
    ap.add_argument("--keep-coarse", type=int, default=0, help="put the draft's content below this many pixels back "
                    "into the refined image (a Keep Coarse node after the refine; 0: not, as the workflow)")
    ap.add_argument("--restore-strength", type=float, default=0.1,
                    help="strength for the degraded images (the refine_any_image workflow's)")
    ap.add_argument("--steps", type=int, default=20, help="refinement steps (the workflow's Refine: max_steps 20)")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degrade-px", type=int, default=48, help="degraded images: downscaled to this and back")
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-out captions/images (0: all)")
    args = ap.parse_args(argv)

    G, clip = sg.load_stylegan(args.stylegan), cs.load_clip(args.clip)
    model, vae = dit.load_dit(args.dit), taesd.load_vae(args.vae)
    size = 8 * model.config.input_size  # the DiT's working size
    real, records = zoo_data.load(args.data, "heldout", size)
    real = (real + 1) / 2
    n = min(len(records), args.limit) if args.limit else len(records)
    refine = _refiner(model, vae, args, args.strength)
    style = tzc.heldout_captions(clip, args.data)
    draft = tzs.sample_images(G, style, len(style), args.seed, args.psi)[:n]
    draft = F.interpolate(draft, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    stages = dict(zip(("draft", "vae", "refined_plain"), refine(draft, style[:n])))
    stages["refined"] = region.add_refinement(draft, stages["refined_plain"], stages["vae"])  # Decode Refinement
    if args.keep_coarse:
        stages["refined"] = region.keep_coarse(stages["refined"], draft, args.keep_coarse)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "size": size,
               "sha256": {k: sha256_of(getattr(args, k)) for k in ("stylegan", "clip", "dit", "vae")}}
    detail_real = metrics.high_frequency(real)
    results.update(judge_stages(clip, args.data, stages, style[:n], detail_real))
    for key in ("prompt_clip_score", "prompt_fd", "detail_ratio"):
        results[f"gain_{key}"] = results["refined"][key] - results["vae"][key]
    # degraded real images: blurred copies of the held-out images, refined with their own caption
    degraded = F.interpolate(F.interpolate(real[:n], size=args.degrade_px, mode="bilinear", antialias=True),
                             size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    restored = dict(zip(("degraded", "vae", "refined"), _refiner(model, vae, args, args.restore_strength)(
        degraded, style[:n])))
    restored["refined_added"] = region.add_refinement(degraded, restored["refined"], restored["vae"])
    for name in ("vae", "refined"):  # as refine_any_image does: Keep Coarse at the input's real resolution
        restored[f"{name}_keep_coarse"] = region.keep_coarse(restored[name], degraded, args.degrade_px)
    results["degraded"] = {"px": args.degrade_px, "images": n, "strength": args.restore_strength}
    for name, images in restored.items():
        results["degraded"][name] = {"psnr_db": metrics.psnr(images, real[:n]), "ssim": metrics.ssim(images, real[:n]),
                                     "detail_ratio": metrics.high_frequency(images) / detail_real}
    tzc.save_grid(torch.cat([stages[k][:8] for k in stages] + [real[:8]] + [restored[k][:8] for k in restored]),
                  args.out.with_suffix(".png"))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name in stages:
        r = results[name]
        closer = f"  closer to the prompt than the draft {r['closer_to_prompt']:.0%}" if name != "draft" else ""
        print(f"{name:8s} CLIP score {r['prompt_clip_score']:.3f}  FD {r['prompt_fd']:.3f}  "
              f"detail {r['detail_ratio']:.3f}{closer}")
    for name in restored:
        r = results["degraded"][name]
        print(f"degraded {name:20s} PSNR {r['psnr_db']:.2f} dB  SSIM {r['ssim']:.3f}  detail {r['detail_ratio']:.3f}")
    print(f"wrote {args.out}")


def _refiner(model: dit.DiT, vae: taesd.TinyAutoencoder, args, strength: float):
    """images in 0..1 and their styles -> (images, VAE round trip, refined at `strength`), each in 0..1."""
    sigmas, ts = sampling.img2img_schedule(args.steps, strength)

    def refine(images: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(images)
        null = torch.full((n,), model.config.null_class, dtype=torch.long)
        z = encode(vae, images)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
        refined = torch.cat([sampling.euler_img2img(model, z[i:i + 64], null[i:i + 64], sigmas, ts, args.cfg,
                                                    noise[i:i + 64], style=style[i:i + 64])[0]
                             for i in range(0, n, 64)])
        return images, decode(vae, z), decode(vae, refined)

    return refine


def judge_stages(clip: cs.StyleCLIP, data: Path, stages: dict[str, torch.Tensor], style: torch.Tensor,
                 detail_real: float) -> dict[str, dict]:
    """Figures per stage (images in 0..1, one per caption, the first stage the draft) for captions with these
    embeddings `style`: zoo-CLIP score with the caption, Fréchet distance of CLIP image features to the held-out
    images (tzc.judge_text_to_image), the detail ratio to `detail_real` (the real held-out images' high-frequency
    energy) and, after the draft, the share of images at least as close to their caption as their draft."""
    first, out = None, {}
    for name, images in stages.items():
        scores = _clip_scores(clip, images, style)
        out[name] = tzc.judge_text_to_image(clip, data, lambda _: images, unconditional=False)
        out[name].pop("samples")
        out[name]["prompt_clip_score"] = float(scores.mean())  # each image with its own caption, in any order
        out[name]["detail_ratio"] = metrics.high_frequency(images) / detail_real
        if first is None:
            first = scores
        else:
            out[name]["closer_to_prompt"] = float((scores >= first).float().mean())
    return out


def _clip_scores(clip: cs.StyleCLIP, images: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per image (0..1), the zoo CLIP's cosine with its own caption's embedding, as the judge and the demo score it."""
    return (tzc.judged_features(clip, images) * style).sum(1)


def encode(vae: taesd.TinyAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Images in 0..1 -> SD1-scaled latents, as the DiT was trained on them (train_zoo_dit.encode_latents)."""
    return tzd.encode_latents(vae, images * 2 - 1)


def decode(vae: taesd.TinyAutoencoder, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(z[i:i + 64] / taesd.SD1_SCALE).clamp(-1, 1) * 0.5 + 0.5 for i in range(0, len(z), 64)])


if __name__ == "__main__":
    main()
