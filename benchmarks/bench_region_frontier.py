"""Region-adaptive refinement's cost/quality frontier on the zoo DiT: for each (strength, min steps, area) setting,
counted FLOPs and wall time of uniform over region-adaptive (measured side by side, twice, interleaved; the faster
of each kept) and the important-region PSNR loss, with the same loss for "exact context".

Exact context (bench_region_refine's fresh_context): the region method's step counts, but every token recomputed
at every step, so the keys/values the important tokens attend to are never forecast. Its loss is what giving the
rest fewer steps costs the important region through attention alone: no caching or forecasting scheme that only
saves the rest's work can do better than it by much (it could only with a better solver for the rest's own few
steps). So where exact context already loses more than the target, the setting cannot meet it on this model.

Drafts, maps, noise and the 100-step uniform reference are bench_region_refine's (16 held-out emoji made coarse,
the analytic pre-scorer's two-level work map with --area at full work, border 0, cfg 3); quality is VAE-decoded
pixel PSNR against the reference, "loss" = uniform's PSNR minus the method's, in the important region (tokens at
the full step count). Writes benchmarks/results/region_frontier_zoo.json.

    .venv/bin/python benchmarks/bench_region_frontier.py --checkpoint zoo/dit/diffugan-emoji-dit.safetensors \\
        --vae zoo/vae/diffugan-emoji-vae.safetensors [--strengths 0.25,0.4,0.6] [--min-steps 1,2,4,8] [--areas 0.25,0.4]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_region_refine as brr  # noqa: E402  (also registers the pack as `diffugan`)
from devkit import sampling  # noqa: E402
from diffugan.models import dit, region  # noqa: E402

TARGET = {"flops_ratio": 3.0, "wall_speedup": 2.5, "psnr_loss_important_db": 0.5}  # issue #7


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="trained DiT (the zoo's)")
    ap.add_argument("--vae", type=Path, required=True, help="the VAE of its latents")
    ap.add_argument("--drafts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--strengths", type=floats, default=[0.25, 0.4, 0.6])
    ap.add_argument("--min-steps", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--areas", type=floats, default=[0.25, 0.4])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "region_frontier_zoo.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = dit.load_dit(args.checkpoint).requires_grad_(False)
    sha = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()[:12]
    maps = {}
    for area in args.areas:  # the same drafts for every area; only the work map changes
        vae, drafts, labels, maps[area], _ = brr.zoo_drafts(args.vae, args.drafts, 32, area, model.config)
    noise = torch.randn(drafts.shape, generator=torch.Generator().manual_seed(2))

    def sample(sigmas, ts, counts=None, **kw):
        outs, flops, dense, start = [], 0, 0, time.perf_counter()
        for i in range(0, len(drafts), args.batch):
            part = slice(i, i + args.batch)
            out, state = sampling.euler_img2img(model, drafts[part], labels[part], sigmas, ts, args.cfg, noise[part],
                                           None if counts is None else counts[part], **kw)
            outs.append(out)
            if state is not None:
                flops, dense = flops + state.flops, dense + state.dense_flops
        return torch.cat(outs), time.perf_counter() - start, (dense / flops if flops else 1.0)

    def pixels(latents):
        return torch.cat([vae.decode(latents[i:i + 16] / 0.18215) for i in range(0, len(latents), 16)]) * 0.5 + 0.5

    rows = []
    with torch.inference_mode():
        sample(*sampling.img2img_schedule(2, 0.5))  # warm-up
        for strength in args.strengths:
            reference = pixels(sample(*sampling.img2img_schedule(args.ref_steps, strength))[0])
            sigmas, ts = sampling.img2img_schedule(args.steps, strength)
            uniform, wall_u, _ = sample(sigmas, ts)
            uniform = pixels(uniform)
            for min_steps, area in itertools.product(args.min_steps, args.areas):
                counts = region.token_step_counts(region.step_counts_from_map(maps[area], drafts.shape[-2:], args.steps,
                                                                        min_steps), model.config.patch_size, 0)
                full = region.token_pixels(counts == args.steps, model.grid(drafts), model.config.patch_size)
                mask = F.interpolate(full.float(), scale_factor=8, mode="nearest").bool()
                adaptive, wall_r, flops_ratio = sample(sigmas, ts, counts)
                exact, _, _ = sample(sigmas, ts, counts, dense_every=1)
                wall_u2 = sample(sigmas, ts)[1]
                wall_r2 = sample(sigmas, ts, counts)[1]

                def psnr(img, m):
                    return brr.masked_psnr(img, reference, m, 1.0)

                adaptive, exact = pixels(adaptive), pixels(exact)
                base = psnr(uniform, mask)
                row = dict(strength=strength, min_steps=min_steps, area=area,
                           important_token_fraction=float((counts == args.steps).float().mean()),
                           flops_ratio=flops_ratio, wall_speedup=min(wall_u, wall_u2) / min(wall_r, wall_r2),
                           psnr_important_uniform_db=base,
                           psnr_loss_important_db=base - psnr(adaptive, mask),
                           psnr_loss_important_db_exact_context=base - psnr(exact, mask),
                           psnr_rest_uniform_db=psnr(uniform, ~mask), psnr_rest_region_db=psnr(adaptive, ~mask))
                row["meets_targets"] = (row["flops_ratio"] >= TARGET["flops_ratio"]
                                        and row["wall_speedup"] >= TARGET["wall_speedup"]
                                        and row["psnr_loss_important_db"] <= TARGET["psnr_loss_important_db"])
                rows.append(row)
                print(f"strength {strength:.2f} min {min_steps} area {area:.2f}: {flops_ratio:.2f}x FLOPs, "
                      f"{row['wall_speedup']:.2f}x wall, loss {row['psnr_loss_important_db']:.2f} dB "
                      f"(exact context {row['psnr_loss_important_db_exact_context']:.2f} dB), "
                      f"rest {row['psnr_rest_region_db']:.1f} vs {row['psnr_rest_uniform_db']:.1f} dB", flush=True)
    within = [r for r in rows if r["psnr_loss_important_db"] <= TARGET["psnr_loss_important_db"]]
    within_exact = [r for r in rows if r["psnr_loss_important_db_exact_context"] <= TARGET["psnr_loss_important_db"]]
    summary = {
        "settings": len(rows),
        "settings_meeting_all_targets": sum(r["meets_targets"] for r in rows),
        "best_flops_ratio_within_loss_target": max((r["flops_ratio"] for r in within), default=None),
        "best_flops_ratio_within_loss_target_exact_context": max((r["flops_ratio"] for r in within_exact),
                                                                  default=None),
        "best_flops_ratio": max(r["flops_ratio"] for r in rows),
    }
    print(json.dumps(summary))
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="region-adaptive refinement: cost/quality frontier", command=" ".join(sys.argv),
        weights=f"trained: {args.checkpoint.name} (sha256 {sha}…)", latent_size=list(drafts.shape[-2:]),
        drafts=len(drafts), batch=args.batch, steps=args.steps, ref_steps=args.ref_steps, cfg=args.cfg, border=0,
        targets=TARGET, device="cpu", cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(), torch=torch.__version__, summary=summary, rows=rows), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
