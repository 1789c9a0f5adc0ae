"""ViT ControlNet cost vs token budget: counted FLOPs and wall time of the control branch, and the whole DiT step
with the ControlNet, at budgets 10 % … 100 %, side by side in one run (same model, inputs, threads).

Timings interleave the budgets round-robin and keep each one's best of --reps, so machine noise hits every budget
alike. With random weights (until the demo zoo ships a trained DiT and ControlNet) this measures COST ONLY: edge F1
of refined images against the control map needs trained weights and is reported as not measured. Writes
benchmarks/results/vit_controlnet.json.

    .venv/bin/python benchmarks/bench_vit_controlnet.py [--model DiT-B/2] [--size 256] [--control-depth 6]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (registers the pack as `diffugan`)
from diffugan.models import dit  # noqa: E402
from diffugan.models import vit_controlnet as vc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="DiT-B/2")
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--control-depth", type=int, default=6, help="DiT blocks copied into the control branch")
    ap.add_argument("--batch", type=int, default=2, help="rows per model call (2 = one image with CFG)")
    ap.add_argument("--budgets", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vit_controlnet.json")
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]

    torch.manual_seed(0)
    model = dit.DiT(dit.standard_config(args.model, args.size)).eval()
    net = vc.ViTControlNet.from_dit(model, args.control_depth).eval()
    with torch.no_grad():  # non-zero projections, as after training (a fresh ControlNet would add zeros)
        for layer in [net.before_proj, *net.after_proj]:
            layer.weight.normal_(0, 0.02)
    lat = args.size // 8
    x = torch.randn(args.batch, 4, lat, lat)
    t = torch.full((args.batch,), 500.0)
    y = torch.tensor([3] * args.batch)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, args.size), torch.linspace(-1, 1, args.size), indexing="ij")
    hint = ((((xx * 6).round() - xx * 6).abs() < 0.05) | (((yy * 6).round() - yy * 6).abs() < 0.05)).float()
    hint = hint[None, None].expand(args.batch, 3, -1, -1)  # a grid of lines as the edge map
    grid = model.grid(x)
    tokens_n = grid[0] * grid[1]
    importance = torch.rand(1, tokens_n, generator=torch.Generator().manual_seed(1))

    with torch.inference_mode():
        tokens, c = model.embed(x), model.conditioning(t, y)
        prepared = net.prepare_hint(hint, grid)

        def branch(b):
            return lambda: net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=b), importance)

        def step(b):
            control = None if b is None else (lambda tk, cc, g: net.residuals(
                tk, cc, prepared, g, vc.ControlSettings(budget=b), importance))
            return lambda: model(x, t, y, control=control)

        cases = {f"branch@{b}": branch(b) for b in budgets}
        cases |= {f"step@{b}": step(b) for b in budgets} | {"step@none": step(None)}
        best = {k: float("inf") for k in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)

    dense_flops = net.flops(tokens_n, 1.0) * args.batch
    dit_flops = dit.transformer_flops(model.config, tokens_n, tokens_n) * args.batch
    rows = []
    for b in budgets:
        f = net.flops(tokens_n, b) * args.batch
        row = dict(budget=b, tokens=tokens_n if b >= 1 else max(1, math.ceil(b * tokens_n - 1e-9)), branch_flops=f,
                   branch_flops_ratio_vs_dense=dense_flops / f, branch_seconds=best[f"branch@{b}"],
                   branch_wall_ratio_vs_dense=best["branch@1.0"] / best[f"branch@{b}"],
                   step_seconds=best[f"step@{b}"],
                   step_overhead_vs_no_control=best[f"step@{b}"] / best["step@none"] - 1,
                   step_flops_overhead_vs_no_control=f / dit_flops, edge_f1="not measured: random weights")
        rows.append(row)
        print(f"budget {b:>4.0%}: branch FLOPs {row['branch_flops_ratio_vs_dense']:.2f}x fewer than dense, wall "
              f"{best[f'branch@{b}'] * 1000:.1f} ms ({row['branch_wall_ratio_vs_dense']:.2f}x faster); DiT step + "
              f"ControlNet {row['step_overhead_vs_no_control'] * 100:+.1f}% wall, "
              f"{row['step_flops_overhead_vs_no_control'] * 100:+.1f}% FLOPs vs no ControlNet", flush=True)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="ViT ControlNet cost vs token budget", model=args.model, image_size=args.size,
        control_depth=args.control_depth, rows_per_call=args.batch, command=" ".join(sys.argv),
        weights="random (cost only; edge F1 needs a trained DiT + ControlNet)", device="cpu",
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        step_seconds_without_control=best["step@none"], results=rows), indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
