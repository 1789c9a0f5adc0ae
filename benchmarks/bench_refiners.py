"""The zoo's two diffusion models head to head — the DiT (a transformer) and the FiLM UNet (convolutional) — as
refiners of the same drafts, and the FiLM UNet's DDIM step trade-off; everything through ComfyUI's own sampling
(`comfy.sample.sample_custom`, in this process, the pinned ComfyUI) on the MODELs the pack's loaders give.

1. Refinement (img2img at --strength, CFG --cfg, the prompt's zoo-CLIP style on the positive side, no style on the
   negative — what DiffuGAN DiT Conditioning / FiLM UNet Conditioning give). The same latents (the zoo VAE's), the
   same noise, for:
     dit            the DiT, stock Euler, --steps steps on the `normal` schedule (DiT Refine at full work)
     unet           the FiLM UNet, stock `ddim` sampler on the `ddim_uniform` schedule, --steps steps (the UNet
                    workflow's KSampler; ComfyUI's `ddim` sampler is its Euler step)
     unet_dit_sigmas  the FiLM UNet on the DiT's very noise levels (σ list): the same strength means a different
                    starting σ on the two schedules (DiT: linear β; UNet: SD1's), so this row is the like-for-like one
     unet_equal_wall  the FiLM UNet with the step count that takes the DiT's wall time
   and both again at each of the --sweep strengths (how the trade-off between change and fidelity moves)
   on two kinds of drafts: the zoo StyleGAN's drafts of --captions held-out captions (one per caption, upsampled
   bicubic as the workflows' ImageScale does) and --captions degraded held-out images (down to --degrade-px and
   back up), each refined with its own caption. Each result (and the VAE round trip) also through DiffuGAN Keep
   Coarse (`<row>_keep_coarse`): the input's content at its real resolution (the StyleGAN's size; --degrade-px)
   put back, only the finer detail taken from the refiner.
   Figures (scripts/eval_zoo_pipeline.py's): zoo-CLIP score with each image's own caption, Fréchet distance of
   zoo-CLIP image features to all held-out images, detail ratio (high-frequency energy over that of the held-out
   images); for the degraded images PSNR and SSIM to the clean originals. The draft and its VAE round trip as the
   baselines.
2. Text -> image from noise: the FiLM UNet with stock DDIM (sampler ddim, scheduler ddim_uniform) at each of
   --ddim-steps and a --ref-steps reference, and the DiT with Euler at --steps: seconds per image, CLIP score,
   Fréchet distance, PSNR of the decoded image to the UNet's reference (how far fewer steps are from converged).

    .venv/bin/python benchmarks/bench_refiners.py --unet <zoo FiLM UNet> --dit <zoo DiT> --vae <their VAE>
                                          # -> benchmarks/results/refiners_zoo.json (+ .png: a contact sheet)
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
from devkit import metrics  # noqa: E402

ZOO = ROOT / "zoo"


def unet_conditioning(style: torch.Tensor):
    """Positive: one style per image (B, D); negative: no style (zeros), as DiffuGAN FiLM UNet Conditioning."""
    def side(s):
        return [[torch.zeros(1, 1, 1), {"film_style": s.float()}]]

    return side(style), side(torch.zeros_like(style))


class Sampler:
    """One model as a stock MODEL with its conditioning and sampler: sample(latent, noise, styles, sigmas)."""

    def __init__(self, model, conditioning_fn, sampler_name: str, cfg: float):
        import comfy.samplers

        self.model, self.cond, self.cfg = model, conditioning_fn, cfg
        self.sampler = comfy.samplers.sampler_object(sampler_name)

    def sigmas(self, steps: int, strength: float = 1.0, scheduler: str = "normal") -> torch.Tensor:
        """As KSampler computes them for `steps` steps at denoise `strength`."""
        import comfy.samplers

        total = int(steps / strength) if strength < 1 else steps
        ms = self.model.get_model_object("model_sampling")
        return comfy.samplers.calculate_sigmas(ms, scheduler, total).cpu()[-(steps + 1):]

    def __call__(self, latent, noise, styles, sigmas, batch: int) -> tuple[torch.Tensor, float]:
        """-> (latents, wall seconds), `batch` images at a time."""
        import comfy.sample

        outs, wall = [], 0.0
        for i in range(0, len(latent), batch):
            b = slice(i, i + batch)
            pos, neg = self.cond(styles[b])
            t = time.perf_counter()
            outs.append(comfy.sample.sample_custom(self.model, noise[b], self.cfg, self.sampler, sigmas, pos, neg,
                                                   latent[b], disable_pbar=True, seed=0))
            wall += time.perf_counter() - t
        return torch.cat(outs), wall


def judge(clip, data, images: torch.Tensor, captions: torch.Tensor, detail_real: float) -> dict:
    """CLIP score of each image with its own caption's embedding (`captions`, unit vectors), Fréchet distance of the
    images' zoo-CLIP features to all held-out images, detail ratio."""
    import train_zoo_clip as tzc

    r = tzc.judge_text_to_image(clip, data, lambda _: images, unconditional=False)
    score = float((tzc.judged_features(clip, images) * captions).sum(1).mean())
    return {"clip_score": score, "fd": r["prompt_fd"], "detail_ratio": metrics.high_frequency(images) / detail_real,
            "real_train_fd": r["real_train_fd"]}


@torch.no_grad()
def run(args) -> dict:
    import train_zoo_clip as tzc
    import train_zoo_stylegan as tzs
    import zoo_data

    from diffugan.models import clip_style as cs
    from diffugan.models import dit, film_unet, region, taesd
    from diffugan.models import stylegan as sg

    dit_nodes = comfy_runtime()
    from diffugan.nodes import film_unet as unet_nodes

    net, unet = dit.load_dit(args.dit), film_unet.load_film_unet(args.unet)
    vae, clip, G = taesd.load_vae(args.vae), cs.load_clip(args.clip), sg.load_stylegan(args.stylegan)
    size = 8 * net.config.input_size
    data = zoo_data.DEFAULT_OUT
    real, records = zoo_data.load(data, "heldout", size)
    real = (real + 1) / 2
    detail_real = metrics.high_frequency(real)
    style = tzc.heldout_captions(clip, data)
    pick = torch.linspace(0, len(records) - 1, args.captions).round().long()
    style, clean = style[pick], real[pick]
    draft = tzs.sample_images(G, style, len(style), args.seed, args.psi)
    draft = F.interpolate(draft, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    degraded = region.coarse(clean, args.degrade_px).clamp(0, 1)
    models = {"dit": Sampler(dit_nodes.dit_to_comfy_model(net), lambda s: conditioning(dit_nodes, s), "euler",
                             args.cfg),
              "unet": Sampler(unet_nodes.film_unet_to_comfy_model(unet), unet_conditioning, "ddim", args.cfg)}
    import comfy.sample

    def refine(images: torch.Tensor, equal_steps: int | None, strength: float, coarse_px: int) -> dict:
        """-> {stage: (decoded images, wall seconds)} for the input, its VAE round trip and each refiner (the UNet
        also at the DiT's wall time, given `equal_steps`)."""
        lat = torch.cat([vae.encode(images[i:i + 32] * 2 - 1) for i in range(0, len(images), 32)])  # as VAEEncode
        noise = comfy.sample.prepare_noise(lat, args.seed)
        out = {"input": (images, 0.0), "vae": (decode(vae, lat), 0.0)}
        dit_sigmas = models["dit"].sigmas(args.steps, strength)  # what DiT Refine uses (scheduler normal)
        jobs = [("dit", models["dit"], dit_sigmas),
                ("unet", models["unet"], models["unet"].sigmas(args.steps, strength, "ddim_uniform")),
                ("unet_dit_sigmas", models["unet"], dit_sigmas)]  # the same noise levels as the DiT's
        if equal_steps:
            jobs.append(("unet_equal_wall", models["unet"], models["unet"].sigmas(equal_steps, strength,
                                                                                  "ddim_uniform")))
        for name, model, sigmas in jobs:
            res, wall = model(lat, noise, style, sigmas, args.batch)
            out[name] = (decode(vae, res), wall)
        for name in ("vae", "dit", "unet"):  # DiffuGAN Keep Coarse: the input's content at its own resolution back
            out[f"{name}_keep_coarse"] = (region.keep_coarse(out[name][0], images, coarse_px), out[name][1])
        out["sigma_start"] = {"dit": float(dit_sigmas[0]),
                              "unet": float(models["unet"].sigmas(args.steps, strength, "ddim_uniform")[0])}
        return out

    def figures(kind: str, stages: dict) -> dict:
        rows = {"sigma_start": stages.pop("sigma_start")}
        for name, (pix, wall) in stages.items():
            r = {"wall_s": wall, "seconds_per_image": wall / len(pix), **judge(clip, data, pix, style, detail_real)}
            if kind == "degraded":
                r.update(psnr_db=metrics.psnr(pix, clean), ssim=metrics.ssim(pix, clean))
            rows[name] = r
            print(f"{kind:8s} {name:16s} " + "  ".join(f"{k} {v:.4g}" for k, v in r.items()
                                                       if not k.startswith("real")), flush=True)
        return rows

    with torch.inference_mode():
        for m in models.values():  # warm-up: first calls allocate
            m(torch.zeros(args.batch, 4, size // 8, size // 8), torch.zeros(args.batch, 4, size // 8, size // 8),
              style[:args.batch], m.sigmas(2, args.strength), args.batch)
        # the UNet's step count at the DiT's wall time, from a timing pass on the first batch
        z0 = torch.zeros(args.batch, 4, size // 8, size // 8)
        walls = {n: m(z0, torch.randn_like(z0), style[:args.batch], m.sigmas(args.steps, args.strength),
                      args.batch)[1] for n, m in models.items()}
        equal_steps = max(1, round(args.steps * walls["dit"] / walls["unet"]))
        results: dict = {}
        sheets = []
        px = {"stylegan": G.img_resolution, "degraded": args.degrade_px}  # what each kind of input really holds
        for kind, images in (("stylegan", draft), ("degraded", degraded)):
            stages = refine(images, equal_steps, args.strength, px[kind])
            results[kind] = figures(kind, stages)
            sheets.append(torch.cat([stages[k][0][:8] for k in ("input", "dit", "dit_keep_coarse", "unet")]))
        results["unet_equal_wall_steps"] = equal_steps
        results["strength_sweep"] = {}
        for strength in args.sweep:  # both refiners at other strengths, the same drafts and noise
            print(f"strength {strength}:", flush=True)
            results["strength_sweep"][str(strength)] = {
                kind: figures(kind, refine(images, None, strength, px[kind]))
                for kind, images in (("stylegan", draft), ("degraded", degraded))}
        if not args.skip_text_to_image:  # text -> image from noise
            lat = torch.zeros(len(style), 4, size // 8, size // 8)
            noise = comfy.sample.prepare_noise(lat, args.seed)
            t2i = {}
            m = models["unet"]
            ref, ref_wall = m(lat, noise, style, m.sigmas(args.ref_steps, 1.0, "ddim_uniform"), args.batch)
            ref_pix = decode(vae, ref)
            for steps in args.ddim_steps:
                res, wall = m(lat, noise, style, m.sigmas(steps, 1.0, "ddim_uniform"), args.batch)
                pix = decode(vae, res)
                t2i[f"unet_ddim_{steps}"] = {"steps": steps, "seconds_per_image": wall / len(lat),
                                             "psnr_to_reference_db": metrics.psnr(pix, ref_pix),
                                             **judge(clip, data, pix, style, detail_real)}
                if steps == args.ddim_steps[0]:
                    sheets.append(pix[:8])
            t2i[f"unet_ddim_{args.ref_steps}"] = {"steps": args.ref_steps, "seconds_per_image": ref_wall / len(lat),
                                                  **judge(clip, data, ref_pix, style, detail_real)}
            d = models["dit"]
            res, wall = d(lat, noise, style, d.sigmas(args.steps, 1.0), args.batch)
            pix = decode(vae, res)
            t2i[f"dit_euler_{args.steps}"] = {"steps": args.steps, "seconds_per_image": wall / len(lat),
                                              **judge(clip, data, pix, style, detail_real)}
            sheets += [ref_pix[:8], pix[:8]]
            for name, r in t2i.items():
                print(f"text->image {name:14s} " + "  ".join(f"{k} {v:.4g}" for k, v in r.items()
                                                              if not k.startswith("real")), flush=True)
            results["text_to_image"] = t2i
    if args.out:
        tzc.save_grid(torch.cat(sheets), args.out.with_suffix(".png"))
    return {"benchmark": "the zoo DiT and the zoo FiLM UNet as refiners of the same drafts, and text -> image",
            "command": " ".join(sys.argv), "weights": args.weights, "machine": machine(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "weights"},
            "dit_tokens": (net.config.input_size // net.config.patch_size) ** 2,
            "params": {"dit": sum(p.numel() for p in net.parameters()),
                       "unet": sum(p.numel() for p in unet.parameters())},
            "sheet_rows": ["stylegan: draft, dit, dit_keep_coarse, unet", "degraded: input, dit, dit_keep_coarse, unet"]
            + ([] if args.skip_text_to_image else [f"unet ddim {args.ddim_steps[0]}", f"unet ddim {args.ref_steps}",
                                                   f"dit euler {args.steps}"]),
            **results}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", type=Path, default=ZOO / "film_unet" / "diffugan-emoji-unet.safetensors")
    ap.add_argument("--dit", type=Path, default=ZOO / "dit" / "diffugan-emoji-dit-256.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    ap.add_argument("--stylegan", type=Path, default=ZOO / "stylegan" / "diffugan-emoji-stylegan.safetensors")
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--captions", type=int, default=96, help="held-out captions (a draft and a degraded image each)")
    ap.add_argument("--degrade-px", type=int, default=48)
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--sweep", type=lambda v: [float(x) for x in v.split(",") if x], default=[0.1, 0.2, 0.5],
                    help="other strengths to refine at (both refiners, --steps steps)")
    ap.add_argument("--ddim-steps", type=lambda s: [int(v) for v in s.split(",")], default=[10, 20, 50])
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--skip-text-to-image", action="store_true", help="only the refinement part (1.)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refiners_zoo.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.weights = {k: sha(getattr(args, k)) for k in ("unet", "dit", "vae", "stylegan", "clip")}
    torch.manual_seed(0)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
