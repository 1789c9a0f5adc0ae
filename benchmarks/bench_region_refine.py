"""Region-adaptive vs uniform DiT refinement: counted transformer FLOPs, wall time and quality, side by side in one run.

Same drafts, noise and model for every method; the region state is the one the ComfyUI sampler uses
(models/region.py's RegionRefinement), driven by the same Euler update (devkit/sampling.py) without ComfyUI, so
the timings contain only the refinement itself.

Methods (all img2img from the same noised draft, K = --steps at --strength, classifier-free guidance --cfg):
  reference     uniform with --ref-steps (the quality reference: the same ODE solved finely)
  uniform       every token, every step, K steps (the full-cost baseline)
  region        important tokens every step, the rest --min-steps; between its evaluations a token's prediction and
                its keys/values are forecast from its last two evaluations (RegionRefinement's default)
  region_hold   diagnostic: the same, but holding a token's last prediction and keys/values (forecast 0)
  fewer_steps   uniform with the step count that costs the same counted FLOPs as `region`
  random_tokens the region method's per-token step counts, shuffled over the tokens (same FLOPs, wrong places)
  fresh_context diagnostic, not a method: the region method's step counts, but every token is recomputed at every
                step, so the keys/values are never forecast or stale (dense FLOPs). Its loss is what giving the rest
                fewer steps costs the important region through attention alone; region minus it is the cost of
                forecasting the keys/values instead of computing them.

Trained mode (--checkpoint and --vae, the demo zoo's DiT and VAE): drafts are held-out emoji made coarse (down to
--draft-px and back up: a blurry draft, as a fast generator gives), the importance map is the analytic
pre-scorer's, turned into a two-level work map with --area of the pixels at full work (the Budget node's rule);
quality is pixel PSNR and SSIM of the important region and of the rest against the reference, decoded by the VAE.
"PSNR loss" = uniform's PSNR minus the method's, important region. Random mode (no --checkpoint): a random DiT-S/2
and a centred disc map measure SPEED ONLY and say so.

    .venv/bin/python benchmarks/bench_region_refine.py --checkpoint zoo/dit/diffugan-emoji-dit.safetensors \\
        --vae zoo/vae/diffugan-emoji-vae.safetensors
    .venv/bin/python benchmarks/bench_region_refine.py [--model DiT-S/2] [--size 256]     # random weights
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import sampling  # noqa: E402
from diffugan.models import dit, region  # noqa: E402
from devkit.drawn import coarsen  # noqa: E402
from devkit.random_weights import perturb  # noqa: E402


def masked_psnr(a: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, peak: float) -> float | None:
    """PSNR (dB) over all pixels inside a (N, 1, H, W) bool mask, pooled over the images; None if the mask is empty."""
    err = (a - ref).square().mean(1, keepdim=True)[mask]
    if err.numel() == 0:
        return None
    mse = float(err.mean())
    return 10 * math.log10(peak ** 2 / mse) if mse > 0 else float("inf")


def masked_ssim(a: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of the SSIM map (11 px Gaussian window, images in [0, 1]) over the pixels inside the mask, pooled."""
    from kornia.metrics import ssim

    s = ssim(a.clamp(0, 1), ref.clamp(0, 1), 11).mean(1, keepdim=True)[mask]
    return float(s.mean()) if s.numel() else None


def disc_mask(h: int, w: int, area: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = (area * 4 / torch.pi) ** 0.5
    return ((xx ** 2 + yy ** 2) <= r * r).float()[None, None]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def zoo_drafts(vae_path: Path, n: int, draft_px: int, area: float, config: dit.DiTConfig):
    """Held-out emoji made coarse, their latents (SD1-scaled), labels and two-level work maps, at the DiT's working
    size and in the drawing styles its labels know."""
    import zoo_data

    from diffugan.models import importance, taesd

    vae = taesd.load_vae(vae_path)
    x, records = zoo_data.load(zoo_data.DEFAULT_OUT, "heldout", 8 * config.input_size,
                               styles=zoo_data.known_styles(config.num_classes))
    pick = torch.linspace(0, len(x) - 1, n).round().long()  # spread over the styles and all categories
    x, records = x[pick], [records[i] for i in pick]
    coarse = coarsen(x, draft_px).clamp(-1, 1)
    with torch.no_grad():
        latents = vae.encode(coarse) * taesd.SD1_SCALE
    imp = importance.analytic_importance(coarse * 0.5 + 0.5)
    work = importance.budget_levels(imp, 2, area)
    labels = torch.tensor([zoo_data.zoo_label(r) for r in records])
    return vae, latents, labels, work, [r["name"] for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained DiT (e.g. the zoo's)")
    ap.add_argument("--vae", type=Path, default=None, help="the VAE of its latents (zoo TAESD-layout)")
    ap.add_argument("--model", default="DiT-S/2", help="random mode: which standard DiT")
    ap.add_argument("--size", type=int, default=256, help="random mode: image size (latent = size / 8)")
    ap.add_argument("--drafts", type=int, default=16, help="trained mode: held-out drafts")
    ap.add_argument("--draft-px", type=int, default=32, help="trained mode: draft made coarse at this size")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--min-steps", type=int, default=0)
    ap.add_argument("--area", type=float, default=0.2, help="fraction of the image at full work")
    ap.add_argument("--border", type=int, default=1, help="tokens of dilation around important regions")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "region_refine.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    trained = args.checkpoint is not None
    if trained:
        if args.vae is None:
            ap.error("--checkpoint needs --vae (quality is measured on decoded pixels)")
        sha = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()[:12]  # which version of the file
        model, weights = dit.load_dit(args.checkpoint), f"trained: {args.checkpoint.name} (sha256 {sha}…)"
        vae, drafts, labels, work, names = zoo_drafts(args.vae, args.drafts, args.draft_px, args.area, model.config)
    else:
        model = perturb(dit.DiT(dit.standard_config(args.model, args.size)).eval(), 0.02)  # every layer does work
        weights = "random (speed only: its quality figures mean nothing)"
        lat = args.size // 8
        g = torch.Generator().manual_seed(1)
        drafts = torch.randn(args.drafts, model.config.in_channels, lat, lat, generator=g)
        labels = torch.arange(args.drafts) % model.config.num_classes
        work = disc_mask(args.size, args.size, args.area).expand(args.drafts, -1, -1, -1)
        vae, names = None, None
    model.requires_grad_(False)
    cfgm = model.config
    sigmas, ts = sampling.img2img_schedule(args.steps, args.strength)
    ref_sigmas, ref_ts = sampling.img2img_schedule(args.ref_steps, args.strength)
    noise_all = torch.randn(drafts.shape, generator=torch.Generator().manual_seed(2))
    lat_hw = drafts.shape[-2:]
    counts_all = region.token_step_counts(region.step_counts_from_map(work, lat_hw, args.steps, args.min_steps),
                                       cfgm.patch_size, border=args.border)
    gen = torch.Generator().manual_seed(3)
    shuffled = torch.stack([c[torch.randperm(len(c), generator=gen)] for c in counts_all])
    methods = ["uniform", "region", "fewer_steps", "random_tokens"]
    outs = {m: [] for m in methods + ["region_hold", "fresh_context", "reference"]}
    wall = {m: 0.0 for m in methods}
    flops = {"uniform": 0, "region": 0, "random_tokens": 0, "fewer_steps": 0}
    eq_steps = None
    with torch.inference_mode():
        # warm-up (first calls allocate)
        sampling.euler_img2img(model, drafts[:1], labels[:1], sigmas, ts, args.cfg, noise_all[:1], counts_all[:1])
        for i in range(0, len(drafts), args.batch):
            d, y, nz = drafts[i:i + args.batch], labels[i:i + args.batch], noise_all[i:i + args.batch]
            c, cs = counts_all[i:i + args.batch], shuffled[i:i + args.batch]
            (u, _), tu = timed(lambda: sampling.euler_img2img(model, d, y, sigmas, ts, args.cfg, nz))
            (r, st), tr = timed(lambda: sampling.euler_img2img(model, d, y, sigmas, ts, args.cfg, nz, c))
            if eq_steps is None:  # equal-FLOPs step count from the first chunk
                eq_steps = max(1, round(args.steps * st.flops / st.dense_flops))
                few_sigmas, few_ts = sampling.img2img_schedule(eq_steps, args.strength)
            (f, _), tf = timed(lambda: sampling.euler_img2img(model, d, y, few_sigmas, few_ts, args.cfg, nz))
            rt, st_rt = sampling.euler_img2img(model, d, y, sigmas, ts, args.cfg, nz, cs)
            rh, _ = sampling.euler_img2img(model, d, y, sigmas, ts, args.cfg, nz, c, forecast=0)
            fc, _ = sampling.euler_img2img(model, d, y, sigmas, ts, args.cfg, nz, c, dense_every=1)
            ref, _ = sampling.euler_img2img(model, d, y, ref_sigmas, ref_ts, args.cfg, nz)
            for m, v in zip(methods + ["region_hold", "fresh_context", "reference"], (u, r, f, rt, rh, fc, ref)):
                outs[m].append(v)
            wall["uniform"] += tu
            wall["region"] += tr
            wall["fewer_steps"] += tf
            flops["uniform"] += st.dense_flops
            flops["region"] += st.flops
            flops["random_tokens"] += st_rt.flops
            flops["fewer_steps"] += st.dense_flops * eq_steps // args.steps
            print(f"drafts {i + len(d)}/{len(drafts)}: uniform {tu:.2f}s region {tr:.2f}s fewer {tf:.2f}s", flush=True)
        outs = {m: torch.cat(v) for m, v in outs.items()}
        full = region.token_pixels(counts_all == args.steps, model.grid(drafts), cfgm.patch_size)  # (N,1,h,w) latent px
        if trained:
            pix = {m: torch.cat([vae.decode(v[i:i + 16] / 0.18215) for i in range(0, len(v), 16)]) * 0.5 + 0.5
                   for m, v in outs.items()}
            mask = F.interpolate(full.float(), scale_factor=8, mode="nearest").bool()
            peak = 1.0
        else:
            pix, mask = outs, full
            peak = float(outs["reference"].max() - outs["reference"].min())
    quality = {}
    has_important = mask.flatten(1).any(1)  # drafts whose map has full-work tokens
    for m in methods + ["region_hold", "fresh_context"]:
        q = {"psnr_important_db": masked_psnr(pix[m], pix["reference"], mask, peak),
             "psnr_rest_db": masked_psnr(pix[m], pix["reference"], ~mask, peak)}
        if trained:
            q["ssim_important"] = masked_ssim(pix[m], pix["reference"], mask)
            q["ssim_rest"] = masked_ssim(pix[m], pix["reference"], ~mask)
        q["psnr_important_db_per_draft"] = [masked_psnr(pix[m][i:i + 1], pix["reference"][i:i + 1],
                                                        mask[i:i + 1], peak) for i in range(len(drafts))]
        quality[m] = q
    summary = {
        "flops_ratio_uniform_over_region": flops["uniform"] / flops["region"],
        "wall_speedup_region": wall["uniform"] / wall["region"],
        "wall_speedup_fewer_steps": wall["uniform"] / wall["fewer_steps"],
        "psnr_loss_important_db_region": quality["uniform"]["psnr_important_db"]
        - quality["region"]["psnr_important_db"],
        "psnr_loss_important_db_fewer_steps": quality["uniform"]["psnr_important_db"]
        - quality["fewer_steps"]["psnr_important_db"],
        "psnr_loss_important_db_random_tokens": quality["uniform"]["psnr_important_db"]
        - quality["random_tokens"]["psnr_important_db"],
        "psnr_loss_important_db_fresh_context": quality["uniform"]["psnr_important_db"]
        - quality["fresh_context"]["psnr_important_db"],
        "psnr_loss_important_db_region_hold": quality["uniform"]["psnr_important_db"]
        - quality["region_hold"]["psnr_important_db"],
        "important_token_fraction": float((counts_all == args.steps).float().mean()),
        "drafts_with_an_important_region": int(has_important.sum()),
        "fewer_steps": eq_steps,
        "max_abs_diff_untouched_vs_draft": float(((outs["region"] - drafts).abs()
                                                  * region.token_pixels(counts_all == 0, model.grid(drafts),
                                                                     cfgm.patch_size)).max()),
    }

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for m in methods + ["region_hold", "fresh_context"]:
        qm = quality[m]
        print(f"{m:14s} PSNR important {f(qm['psnr_important_db'], '.2f')} dB, rest {f(qm['psnr_rest_db'], '.2f')} dB"
              + (f"; SSIM important {f(qm['ssim_important'], '.4f')}, rest {f(qm['ssim_rest'], '.4f')}"
                 if trained else ""))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}))
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="region-adaptive vs uniform DiT refinement", command=" ".join(sys.argv), weights=weights,
        model=asdict_config(cfgm), latent_size=list(lat_hw), drafts=len(drafts), draft_names=names,
        batch=args.batch, cfg=args.cfg, steps=args.steps, ref_steps=args.ref_steps, strength=args.strength,
        min_steps=args.min_steps, area=args.area, border=args.border,
        quality_space="pixels (VAE-decoded), vs the reference" if trained else "latents (meaningless: random weights)",
        device="cpu", cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        torch=torch.__version__, summary=summary, wall_s=wall, flops=flops, quality=quality), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def asdict_config(config) -> dict:
    from dataclasses import asdict

    return asdict(config)


if __name__ == "__main__":
    main()
