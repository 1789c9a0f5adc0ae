"""Region-adaptive vs uniform DiT refinement: counted transformer FLOPs and wall time, side by side in one run.

Same drafts, seeds and model for every method; the Euler loop and the region state are the ones the ComfyUI
sampler uses (models/dit.py), driven here without ComfyUI so the timings contain only the refinement itself.

Methods (all img2img from the same noised draft, K = --steps at --strength):
  uniform      every token, every step (the quality reference at full steps)
  region       important tokens every step, the rest --min-steps (importance: a centred disc, --area of the image)
  fewer_steps  uniform with the step count that costs the same counted FLOPs as `region` (the free baseline)

With random weights (the default until the demo model zoo ships a trained DiT) this measures SPEED ONLY: the
latent PSNR in the important region vs the full-step reference is reported but means nothing without trained
weights (--checkpoint); pixel PSNR/SSIM need the VAE and come with the zoo. Writes
benchmarks/results/region_refine.json.

    .venv/bin/python benchmarks/bench_region_refine.py [--model DiT-S/2] [--size 256] [--checkpoint FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (registers the pack as `diffugan`)
from diffugan.models import dit  # noqa: E402
from random_weights import perturb  # noqa: E402


def schedule(steps: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas and matching discrete timesteps of DiT's linear-β schedule: `steps` evenly spaced timesteps from
    strength * 999 down, then sigma 0 (a plain 'normal'-style img2img schedule)."""
    acp = torch.cumprod(1 - dit.linear_betas(), 0)
    ts = torch.linspace(strength * (dit.NUM_TIMESTEPS - 1), 0, steps + 1)[:-1]
    sig = ((1 - acp) / acp).sqrt()
    sigmas = torch.cat([torch.stack([_interp(sig, t) for t in ts]), torch.zeros(1)]).float()
    return sigmas, ts.float()


def _interp(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    lo, hi = int(t.floor()), int(t.ceil())
    w = float(t - lo)
    return ((1 - w) * values[lo].log() + w * values[hi].log()).exp()


def euler(model, draft, labels, sigmas, ts, cfg, noise, state=None, steps=None):
    """Euler img2img with classifier-free guidance (rows: cond batch, then uncond batch)."""
    n = draft.shape[0]
    x = draft + noise * sigmas[0]
    y = torch.cat([labels, torch.full_like(labels, model.config.null_class)]) if cfg != 1 else labels
    keys = [(c, j) for c in range(2 if cfg != 1 else 1) for j in range(n)]
    images = [j for _, j in keys]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        xx = torch.cat([x, x]) if cfg != 1 else x
        sig = s.expand(xx.shape[0])
        xc = xx / (s ** 2 + 1).sqrt()
        t = ts[i].expand(xx.shape[0])
        if state is None:
            eps = model(xc, t, y)[:, : x.shape[1]]
            den = xx - eps * s
        else:
            den = state(xx, xc, sig, t, y, None, keys, images, lambda e, a, b: a - e * b.view(-1, 1, 1, 1))
        if cfg != 1:
            cond, uncond = den.chunk(2)
            den = uncond + cfg * (cond - uncond)
        x = x + (x - den) / s * (sigmas[i + 1] - s)
    return x


def psnr(a: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) of a against the reference inside a pixel mask, in latent space (peak = reference's range)."""
    m = mask.expand_as(ref)
    mse = ((a - ref)[m] ** 2).mean()
    peak = float(ref.max() - ref.min())
    return float(10 * torch.log10(peak ** 2 / mse)) if mse > 0 else float("inf")


def disc_mask(h: int, w: int, area: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = (area * 4 / torch.pi) ** 0.5
    return ((xx ** 2 + yy ** 2) <= r * r).float()[None, None]


def timed(fn, reps: int):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--min-steps", type=int, default=0)
    ap.add_argument("--area", type=float, default=0.2, help="fraction of the image marked important")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "region_refine.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model, weights = dit.load_dit(args.checkpoint), f"trained: {args.checkpoint.name}"
    else:
        model = perturb(dit.DiT(dit.standard_config(args.model, args.size)).eval(), 0.02)  # every layer does work
        weights = "random (speed only: quality figures need trained weights)"
    model.requires_grad_(False)
    cfgm = model.config
    lat = args.size // 8
    sigmas, ts = schedule(args.steps, args.strength)
    results = []
    with torch.inference_mode():
        for batch, cfg in [(1, 1.0), (1, 4.0), (2, 4.0)]:
            g = torch.Generator().manual_seed(1)
            draft = torch.randn(batch, cfgm.in_channels, lat, lat, generator=g)
            noise = torch.randn(draft.shape, generator=g)
            labels = torch.arange(batch) % cfgm.num_classes
            mask = disc_mask(args.size, args.size, args.area)
            counts = dit.token_step_counts(dit.step_counts_from_map(mask, (lat, lat), args.steps, args.min_steps),
                                           cfgm.patch_size, border=1)

            def region_run():
                region_run.state = dit.RegionAdaptiveState(model, counts, sigmas, draft)
                return euler(model, draft, labels, sigmas, ts, cfg, noise, region_run.state)

            uniform, t_uniform = timed(lambda: euler(model, draft, labels, sigmas, ts, cfg, noise), args.reps)
            region, t_region = timed(region_run, args.reps)
            state = region_run.state
            flops_ratio = state.dense_flops / state.flops
            eq_steps = max(1, round(args.steps / flops_ratio))
            s2, ts2 = schedule(eq_steps, args.strength)
            fewer, t_fewer = timed(lambda: euler(model, draft, labels, s2, ts2, cfg, noise), args.reps)
            imp = dit.token_pixels(counts == args.steps, model.grid(draft), cfgm.patch_size)
            untouched = dit.token_pixels(counts == 0, model.grid(draft), cfgm.patch_size)
            row = dict(batch=batch, cfg=cfg, steps=args.steps, min_steps=args.min_steps,
                       important_token_fraction=float((counts == args.steps).float().mean()),
                       token_evaluation_fraction=state.evaluated_tokens / state.total_tokens,
                       flops_uniform=state.dense_flops, flops_region=state.flops, flops_ratio=flops_ratio,
                       wall_uniform_s=t_uniform, wall_region_s=t_region, wall_speedup=t_uniform / t_region,
                       fewer_steps=eq_steps, wall_fewer_steps_s=t_fewer,
                       latent_psnr_important_region=psnr(region, uniform, imp),
                       latent_psnr_rest=psnr(region, uniform, ~imp),
                       latent_psnr_important_region_fewer_steps=psnr(fewer, uniform, imp),
                       max_abs_diff_untouched_vs_draft=float(((region - draft).abs()
                                                              * untouched).max()) if untouched.any() else None)
            results.append(row)
            print(f"batch {batch} cfg {cfg}: tokens evaluated {100 * row['token_evaluation_fraction']:.1f}%, "
                  f"FLOPs {flops_ratio:.2f}x fewer, wall {t_uniform:.2f}s -> {t_region:.2f}s "
                  f"({row['wall_speedup']:.2f}x); equal-FLOPs uniform = {eq_steps} steps: {t_fewer:.2f}s", flush=True)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="region-adaptive vs uniform DiT refinement", model=args.model, image_size=args.size,
        command=" ".join(sys.argv),
        weights=weights, strength=args.strength, area=args.area, device="cpu",
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        quality=("latent-space PSNR vs the full-step uniform reference is reported per row but means nothing with "
                 "random weights" if not args.checkpoint else "latent-space PSNR vs the full-step uniform reference"),
        results=results),
        indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
