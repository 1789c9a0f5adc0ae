"""VAR as the coarse stage, measured on the zoo: its draft at every stop scale beside the StyleGAN draft, and the
whole coarse-to-fine chain (draft -> DiT refine) against the DiT alone drawing from noise, at equal held-out quality.

On --captions held-out captions (evenly spaced; one image each, the caption's zoo-CLIP embedding as the style), each
picture judged as bench_refiners judges it: zoo-CLIP score with its caption, Fréchet distance of zoo-CLIP features to
all held-out images (lower is closer to real emoji), detail ratio (high-frequency energy over real held-out emoji's,
1 is real). Drafts are judged as they enter the refiner: upscaled (bicubic) to the DiT's size, as ImageScale does.

  var_stop_k     the zoo VAR drawing its first k scales (k = 1 … all; the image of those tokens decoded at full size,
                 as DiffuGAN VAR Draft's stop_scale gives), top-k / top-p / cfg as its workflow
  stylegan       the zoo StyleGAN's draft (ψ --psi), as the hybrid workflow's Generate gives
  chain_*_rS     a draft -> VAE encode -> DiT refine at --strength with S Euler steps (each of --refine-steps, in
                 KSampler's sense, as the Refine node's max_steps: S steps over the last --strength of the noise
                 range), guidance --cfg with the caption
                 (ComfyUI's own sampling on the DiT Loader's MODEL, as DiffuGAN DiT Refine without importance) ->
                 decode; for the VAR's full draft, the VAR stopped at --chain-stop and the StyleGAN draft
  dit_alone_S    the DiT from pure noise, S Euler steps, same guidance and caption, decoded
  equal_quality  per chain: the fewest DiT-alone steps whose Fréchet distance is at most the chain's, and the ratio
                 of their seconds per image (> 1: the chain is faster at equal quality); null when no step count of
                 --alone-steps reaches it

Seconds per image are wall time at --batch, everything counted (draft, encode, sampling, decode), in one process.

    .venv/bin/python benchmarks/bench_var.py --threads 1     # -> benchmarks/results/var_zoo.json (+ .png)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_refine import comfy_runtime, conditioning, decode, machine, sha  # noqa: E402
from bench_refiners import Sampler, judge  # noqa: E402

from devkit import metrics  # noqa: E402

ZOO = ROOT / "zoo"


def timed(fn, n: int, batch: int) -> tuple[torch.Tensor, float]:
    """fn(slice) -> images for that slice of the n items, `batch` at a time: (all images, seconds per image)."""
    out, wall = [], 0.0
    for i in range(0, n, batch):
        t = time.perf_counter()
        out.append(fn(slice(i, min(n, i + batch))))
        wall += time.perf_counter() - t
    return torch.cat(out), wall / n


@torch.inference_mode()
def run(args) -> dict:
    import train_zoo_clip as tzc
    import train_zoo_stylegan as tzs
    import zoo_data

    from diffugan.models import clip_style as cs
    from diffugan.models import dit, taesd
    from diffugan.models import stylegan as sg
    from diffugan.models import var as vm

    dit_nodes = comfy_runtime()  # the pinned ComfyUI on the path: its sampling below
    import comfy.sample

    vq, tr = vm.load_vqvae(args.vqvae), vm.load_var(args.var)
    vm.check_pair(vq, tr, f"{args.var.name} / {args.vqvae.name}: ")
    if not tr.config.style_dim:
        raise SystemExit(f"{args.var.name} is not style-conditioned: this benchmark drafts from the zoo's captions")
    net, vae = dit.load_dit(args.dit), taesd.load_vae(args.vae)
    clip, G = cs.load_clip(args.clip), sg.load_stylegan(args.stylegan)
    size = 8 * net.config.input_size
    data = zoo_data.DEFAULT_OUT
    real, records = zoo_data.load(data, "heldout", size)
    detail_real = metrics.high_frequency((real + 1) / 2)
    pick = torch.linspace(0, len(records) - 1, args.captions).round().long()
    style = tzc.heldout_captions(clip, data)[pick]
    n, scales = len(style), len(tr.config.patch_nums)
    sampler = Sampler(dit_nodes.dit_to_comfy_model(net), lambda s: conditioning(dit_nodes, s), "euler", args.cfg)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)

    def var_draft(stop: int):
        def fn(b: slice) -> torch.Tensor:
            gen = torch.Generator().manual_seed(args.seed + b.start)
            labels = torch.full((b.stop - b.start,), tr.config.num_classes)  # the null class: style only
            img, _ = tr.sample(vq, labels, gen, args.var_cfg, args.top_k, args.top_p, style[b], stop)
            return up(img.float())
        return fn

    def stylegan_draft(b: slice) -> torch.Tensor:
        return up(tzs.sample_images(G, style[b], b.stop - b.start, args.seed + b.start, args.psi))

    def refine(latent: torch.Tensor, b: slice, sigmas: torch.Tensor) -> torch.Tensor:
        noise = comfy.sample.prepare_noise(latent, args.seed + b.start)
        pos, neg = conditioning(dit_nodes, style[b])
        z = comfy.sample.sample_custom(sampler.model, noise, args.cfg, sampler.sampler, sigmas, pos, neg, latent,
                                       disable_pbar=True, seed=0)
        return decode(vae, z)

    def chain(draft_fn, steps: int):
        sigmas = sampler.sigmas(steps, args.strength)

        def fn(b: slice) -> torch.Tensor:
            return refine(vae.encode(draft_fn(b) * 2 - 1), b, sigmas)
        return fn

    def alone(steps: int):
        sigmas = sampler.sigmas(steps, 1.0)

        def fn(b: slice) -> torch.Tensor:
            return refine(torch.zeros(b.stop - b.start, 4, size // 8, size // 8), b, sigmas)
        return fn

    results, pictures = {}, {}

    def measure(name: str, fn) -> dict:
        images, spi = timed(fn, n, args.batch)
        r = {"seconds_per_image": spi, **judge(clip, data, images, style, detail_real)}
        results[name], pictures[name] = r, F.avg_pool2d(images[:8], 2)  # the sheet at half size (128 px)
        print(f"{name:18s} " + "  ".join(f"{k} {v:.4g}" for k, v in r.items() if not k.startswith("real")),
              flush=True)
        return r

    timed(var_draft(scales), args.batch, args.batch)  # warm-up: first calls allocate
    timed(alone(2), args.batch, args.batch)
    for k in range(1, scales + 1):
        measure(f"var_stop_{k}", var_draft(k))
    measure("stylegan", stylegan_draft)
    drafts = {f"var_stop_{scales}": var_draft(scales), "stylegan": stylegan_draft}
    if args.chain_stop and args.chain_stop != scales:
        drafts[f"var_stop_{args.chain_stop}"] = var_draft(args.chain_stop)
    chains = []
    for name, draft_fn in drafts.items():
        for steps in args.refine_steps:
            chains.append(f"chain_{name}_r{steps}")
            measure(chains[-1], chain(draft_fn, steps))
    for steps in args.alone_steps:
        measure(f"dit_alone_{steps}", alone(steps))
    equal = {}
    for name in chains:
        c = results[name]
        hit = next((s for s in sorted(args.alone_steps) if results[f"dit_alone_{s}"]["fd"] <= c["fd"]), None)
        equal[name] = {"fd": c["fd"], "dit_alone_steps": hit,
                       "speedup": None if hit is None else
                       results[f"dit_alone_{hit}"]["seconds_per_image"] / c["seconds_per_image"]}
        print(f"{name}: FD {c['fd']:.4f} reached by the DiT alone at {hit} steps"
              + ("" if hit is None else f" -> the chain is {equal[name]['speedup']:.2f}x as fast"), flush=True)
    names = [f"var_stop_{k}" for k in range(1, scales + 1)] + [m for m in pictures if not m.startswith("var_stop")]
    sheet = args.out.with_suffix(".png")
    sheet.parent.mkdir(parents=True, exist_ok=True)
    tzc.save_grid(torch.cat([pictures[m] for m in names]), sheet, columns=8)
    return {"benchmark": "var_zoo", "command": " ".join(sys.argv), "weights": args.weights, "machine": machine(),
            "captions": n, "size": size, "var_size": vq.config.downsample * tr.config.patch_nums[-1],
            "patch_nums": list(tr.config.patch_nums), "batch": args.batch, "var_cfg": args.var_cfg,
            "top_k": args.top_k, "top_p": args.top_p, "psi": args.psi, "cfg": args.cfg,
            "refine_steps": args.refine_steps, "strength": args.strength, "results": results, "equal_quality": equal,
            "sheet": f"{sheet.name}: rows {', '.join(names)}; the first 8 captions"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vqvae", type=Path, default=ZOO / "var" / "diffugan-emoji-var-vqvae.safetensors")
    ap.add_argument("--var", type=Path, default=ZOO / "var" / "diffugan-emoji-var.safetensors")
    ap.add_argument("--dit", type=Path, default=ZOO / "dit" / "diffugan-emoji-dit-256.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    ap.add_argument("--stylegan", type=Path, default=ZOO / "stylegan" / "diffugan-emoji-stylegan.safetensors")
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--captions", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--var-cfg", type=float, default=3.0, help="the VAR's guidance (ramped over its scales)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--cfg", type=float, default=3.0, help="the DiT's guidance")
    ap.add_argument("--refine-steps", type=lambda v: [int(x) for x in v.split(",")], default=[4, 8, 20],
                    help="the chains' refine steps (the shipped workflows' Refine: 20)")
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--chain-stop", type=int, default=0, help="also chain the VAR stopped at this scale (0: no)")
    ap.add_argument("--alone-steps", type=lambda v: [int(x) for x in v.split(",")], default=[4, 6, 8, 12, 16, 20, 30])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "var_zoo.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.weights = {k: sha(getattr(args, k)) for k in ("vqvae", "var", "dit", "vae", "stylegan", "clip")}
    torch.manual_seed(0)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
