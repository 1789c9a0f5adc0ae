"""StyleGAN generation throughput: images/second for StyleGAN2 and StyleGAN3 at 256² and 1024², batch 1 and 8.

Random weights at the real architectures' sizes (throughput does not depend on the weights): StyleGAN2 config-f
(FFHQ 1024: channel_base 32768, 8 mapping layers; 256: the 'paper256' config, channel_base 16384) and
StyleGAN3-T (channel_base 32768; 256: channel_base 16384, as NVlabs' configs). At 256², batch 1, the naive
upfirdn2d (zero insertion + full convolution + decimation) is timed beside the fast one. All cases run in one
process, one after another, so the ratios printed at the end are measured side by side.
Writes benchmarks/results/stylegan.json.

    .venv/bin/python benchmarks/bench_stylegan.py [--quick] [--device cuda]
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
sys.path.insert(0, str(ROOT))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from diffugan.models import stylegan as sg  # noqa: E402

CONFIGS = {
    ("stylegan2", 256): dict(mapping_kwargs={"num_layers": 8},
                             synthesis_kwargs={"channel_base": 16384, "channel_max": 512}),
    ("stylegan2", 1024): dict(mapping_kwargs={"num_layers": 8},
                              synthesis_kwargs={"channel_base": 32768, "channel_max": 512}),
    ("stylegan3", 256): dict(mapping_kwargs={"num_layers": 2},
                             synthesis_kwargs={"channel_base": 16384, "channel_max": 512}),
    ("stylegan3", 1024): dict(mapping_kwargs={"num_layers": 2},
                              synthesis_kwargs={"channel_base": 32768, "channel_max": 512}),
}


def free_bytes(device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def generate(G, z, fp16: bool, chunk: int) -> None:
    """As the Generate node does: synthesis in chunks sized to the free memory."""
    for i in range(0, z.shape[0], chunk):
        G.synthesis(G.mapping(z[i:i + chunk], truncation_psi=0.7), fp16=fp16)


def measure(G, batch: int, device, reps: int, fp16: bool, warmup: bool = True) -> tuple[float, int]:
    z = sg.z_from_seeds(list(range(batch)), G.z_dim).to(device)
    chunk = sg.images_per_chunk(G.config, free_bytes(device))
    with torch.inference_mode():
        if warmup:  # allocations, kernel selection; negligible beside multi-second CPU runs, so skipped there
            generate(G, z, fp16, chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            generate(G, z, fp16, chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps, min(chunk, batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="256² only (CI-sized)")
    args = ap.parse_args()
    device = torch.device(args.device)
    fp16 = device.type == "cuda"
    results = []
    for (arch, res), kw in CONFIGS.items():
        if args.quick and res > 256:
            continue
        torch.manual_seed(0)
        G = sg.Generator(sg.StyleGANConfig(arch, 512, 0, 512, res, 3, **kw)).eval().requires_grad_(False).to(device)
        params = sum(p.numel() for p in G.parameters())
        for batch in (1, 8):
            small = res <= 256 or device.type == "cuda"
            reps = 3 if small else 1
            secs, chunk = measure(G, batch, device, reps, fp16, warmup=small)
            row = dict(arch=arch, resolution=res, batch=batch, seconds_per_batch=secs, images_per_second=batch / secs,
                       params_millions=params / 1e6, reps=reps, images_per_forward=chunk)
            results.append(row)
            print(f"{arch:9s} {res:5d}² batch {batch}: {batch / secs:8.3f} img/s  ({secs:.3f} s/batch, "
                  f"{chunk} per forward, {params / 1e6:.1f}M params)", flush=True)
            if res == 256 and batch == 1:  # the naive resampling path, side by side
                sg.FAST_RESAMPLING = False
                naive, _ = measure(G, batch, device, reps, fp16)
                sg.FAST_RESAMPLING = True
                results.append(dict(row, resampling="naive", seconds_per_batch=naive, images_per_second=1 / naive))
                print(f"{arch:9s} {res:5d}² batch 1, naive resampling: {1 / naive:8.3f} img/s", flush=True)
            write(results, device, fp16, complete=False)
        del G
    write(results, device, fp16, complete=True)


def ratios_of(results: list[dict]) -> dict:
    by = {(r["arch"], r["resolution"], r["batch"]): r["images_per_second"] for r in results if "resampling" not in r}
    naive = {r["arch"]: r["images_per_second"] for r in results if r.get("resampling") == "naive"}
    ratios = {f"{arch}_256_fast_over_naive_resampling": by[(arch, 256, 1)] / v for arch, v in naive.items()}
    for (arch, res, b), v in by.items():
        other = "stylegan3" if arch == "stylegan2" else None
        if other and (other, res, b) in by:
            ratios[f"sg2_over_sg3_{res}_b{b}"] = v / by[(other, res, b)]
        if b == 8 and (arch, res, 1) in by:
            ratios[f"{arch}_{res}_batch8_over_batch1"] = v / by[(arch, res, 1)]
    return ratios


def write(results: list[dict], device, fp16: bool, complete: bool) -> None:
    """Written after every case, so an interrupted run still leaves its measured rows."""
    ratios = ratios_of(results)
    if complete:
        print("\nratios (same run):")
        for k, v in ratios.items():
            print(f"  {k:38s} {v:6.2f}x")
    out = ROOT / "benchmarks" / "results" / "stylegan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out.write_text(json.dumps(dict(
        benchmark="stylegan throughput", complete=complete, device=str(device), device_name=name,
        torch=torch.__version__, threads=torch.get_num_threads(), fp16=fp16, weights="random (architecture-sized)",
        results=results, ratios=ratios), indent=2) + "\n")
    if complete:
        print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
