"""What the importance pre-scorer costs next to the pipeline it serves, at 512x512, measured side by side in one run.

Pipeline per image (the shipped coarse-to-fine graph without ComfyUI): VAE encode of the 512 px draft, the DiT
refinement (--steps Euler steps at --strength with classifier-free guidance: 2 transformer rows per step, every
token: the uniform cost, the most the refiner can spend), VAE decode. Pre-scorers: the analytic scorer and the
learned scorer on the 512 px draft. Each stage is timed --reps times, interleaved, and the median taken; the
figure is the scorer's time as a share of the whole pipeline's (scorer included).

Models: the zoo's VAE, DiT and scorer when present (their architectures set the cost; the zoo DiT is resolution-
agnostic), otherwise random weights of the same architectures (cost does not depend on weight values).

    .venv/bin/python benchmarks/bench_importance_cost.py [--size 512] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import sampling  # noqa: E402
from diffugan.models import dit, importance, taesd  # noqa: E402

ZOO = ROOT / "zoo"


def load_models():
    files = {"vae": ZOO / "vae" / "diffugan-emoji-vae-256.safetensors",
             "dit": ZOO / "dit" / "diffugan-emoji-dit-256.safetensors",
             "scorer": ZOO / "diffugan_importance" / "diffugan-emoji-scorer.safetensors"}
    vae = taesd.load_vae(files["vae"]) if files["vae"].exists() else taesd.TinyAutoencoder().eval()
    model = dit.load_dit(files["dit"]) if files["dit"].exists() else dit.DiT(dit.DiTConfig(
        depth=6, hidden_size=256, num_heads=4, num_classes=20, learn_sigma=False, input_size=16)).eval()
    scorer = importance.load_scorer(files["scorer"]) if files["scorer"].exists() else importance.LearnedScorer().eval()
    used = {k: (f.name if f.exists() else "random weights, same architecture") for k, f in files.items()}
    return vae, model, scorer, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "importance_cost.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    vae, model, scorer, used = load_models()
    draft = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sigmas, ts = sampling.img2img_schedule(args.steps, args.strength)
    label = torch.tensor([0])
    noise = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(2))
    state = {}

    def encode():
        state["z"] = vae.encode(draft) * taesd.SD1_SCALE

    def refine():
        state["out"], _ = sampling.euler_img2img(model, state["z"], label, sigmas, ts, args.cfg, noise)

    def decode():
        vae.decode(state["out"] / taesd.SD1_SCALE)

    stages = {"vae_encode": encode, "dit_refine": refine, "vae_decode": decode,
              "analytic_scorer": lambda: importance.analytic_importance(draft * 0.5 + 0.5),
              "learned_scorer": lambda: scorer.score(draft * 0.5 + 0.5)}
    times = {k: [] for k in stages}
    with torch.inference_mode():
        for fn in stages.values():  # warm-up, in pipeline order
            fn()
        for _ in range(args.reps):
            for name, fn in stages.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    pipeline = med["vae_encode"] + med["dit_refine"] + med["vae_decode"]
    share = {k: med[k] / (pipeline + med[k]) for k in ("analytic_scorer", "learned_scorer")}
    for k, v in med.items():
        print(f"{k:16s} {v * 1000:9.1f} ms")
    print(f"pipeline without scorer {pipeline:.2f} s; analytic scorer {100 * share['analytic_scorer']:.2f} %, "
          f"learned scorer {100 * share['learned_scorer']:.2f} % of the pipeline")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        benchmark="importance pre-scorer cost vs the coarse-to-fine pipeline", command=" ".join(sys.argv),
        size=args.size, steps=args.steps, strength=args.strength, cfg=args.cfg, reps=args.reps, models=used,
        dit_tokens=(args.size // 8 // model.config.patch_size) ** 2, scorer_params=importance.scorer_params(scorer),
        median_s=med, all_s=times, pipeline_s=pipeline, scorer_share_of_pipeline=share, target_share=0.05,
        device="cpu", cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        torch=torch.__version__), indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
