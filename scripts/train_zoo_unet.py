"""Train the demo zoo's FiLM UNet (models/film_unet.py) on the emoji set, in the latents of the zoo VAE.

ε-prediction MSE under Stable Diffusion 1's schedule (the one ComfyUI samples it with), AdamW, an EMA of the weights
(the EMA is what is saved). Conditioning: the zoo CLIP's style embedding only (no class label): each sample's style
is one of its caption phrasings (train_zoo_clip.CAPTIONS) or, one time in three, its own image, left out with
probability --style-dropout (a zero style: the null embedding, the unconditional side of guidance). Refiner
emphasis as for the DiT (--low-noise P of the samples at t < --low-noise-t). The loop (resume, EMA, schedule,
logging, evaluation, `torchrun`) is devkit.train.TrainLoop; latents and style embeddings are the DiT trainer's
caches (same VAE and CLIP: computed once).

    python scripts/train_zoo_unet.py --vae zoo/vae/diffugan-emoji-vae-256.safetensors \\
        --style-clip zoo/clip_style/diffugan-emoji-clip.safetensors --out .zoo/unet/diffugan-emoji-unet.safetensors

--init starts from a saved UNet of the same architecture (a machine without the training state resumes from the
shipped snapshot so; the optimizer and schedule start afresh). Held-out figures every --eval-every steps (fixed
noise): ε-MSE at t = 100, 300, 500, 700, 900 with the held-out caption as style and with no style, and the
clean-latent error (x0-MSE) at t = 100, 300, 600 — the same figures as the DiT's card, so the two can be compared.
Writes the UNet (fp16 safetensors), <out>.json, resumes from <out>.train.pt, and at every evaluation before the last
step <out stem>.latest.safetensors (+ .json).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import zoo_data  # noqa: E402
from train_zoo_dit import cached_latents, draw_styles, noise_figures, noised_batch, style_vectors  # noqa: E402

from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import film_unet as fu  # noqa: E402


def _predict(model: fu.FiLMUNet, xt, t, style) -> torch.Tensor:
    d = next(model.parameters()).device
    return torch.cat([model(xt[i:i + 64].to(d), t[i:i + 64].to(d), style[i:i + 64].to(d)).float().cpu()
                      for i in range(0, len(xt), 64)])


@torch.no_grad()
def evaluate(model: fu.FiLMUNet, z: torch.Tensor, style: torch.Tensor, alphas_bar: torch.Tensor) -> dict:
    """train_zoo_dit.noise_figures with the held-out styles, and without any (_none)."""
    tt = lambda t: torch.full((len(z),), float(t))  # noqa: E731
    none = torch.zeros_like(style)
    return noise_figures(z, alphas_bar, lambda xt, t: _predict(model, xt, tt(t), style),
                         {"_none": lambda xt, t: _predict(model, xt, tt(t), none)})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--style-clip", type=Path, required=True, help="the zoo CLIP whose embeddings condition it")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32, help="per process")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--channels", type=int, default=64, help="base width")
    ap.add_argument("--mults", default="1,2,2", help="width multiples per resolution")
    ap.add_argument("--res-blocks", type=int, default=2)
    ap.add_argument("--attention", default="2", help="levels (0 = full latent resolution) with self-attention")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too")
    ap.add_argument("--low-noise", type=float, default=0.5, help="share of samples with t < --low-noise-t")
    ap.add_argument("--low-noise-t", type=int, default=400)
    ap.add_argument("--style-dropout", type=float, default=0.15)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from a saved FiLM UNet of the same architecture (e.g. the shipped snapshot)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     threads=args.threads, cpu_bf16=args.bf16)
    z_train, _ = cached_latents(args.vae, args.data, "train")
    z_held, _ = cached_latents(args.vae, args.data, "heldout")
    clip = cs.load_clip(args.style_clip)
    text_train, image_train = style_vectors(clip, args.style_clip, args.data, "train")
    text_held, _ = style_vectors(clip, args.style_clip, args.data, "heldout")
    held_style = text_held[:, 0]  # the held-out caption's first phrasing
    config = fu.FiLMUNetConfig(in_channels=z_train.shape[1], base_channels=args.channels,
                               channel_mults=tuple(int(m) for m in args.mults.split(",")),
                               num_res_blocks=args.res_blocks,
                               attention_levels=tuple(int(a) for a in args.attention.split(",") if a != ""),
                               num_heads=args.heads, style_dim=text_train.shape[-1],
                               groups=min(32, args.channels))
    raw = fu.FiLMUNet(config).train()
    if args.init:
        start = fu.load_film_unet(args.init)
        if start.config != config:
            raise SystemExit(f"--init {args.init.name}: its architecture {start.config} is not {config}")
        raw.load_state_dict(start.state_dict())
        raw.requires_grad_(True)
    raw.style_clip = clip.identity
    loop.log.update(config={**config.__dict__}, style_clip=clip.identity,
                    params=sum(p.numel() for p in raw.parameters()), latent_size=list(z_train.shape[-2:]))
    model = loop.module(raw)
    ema = loop.ema(model, args.ema)
    opt = loop.optimizer(torch.optim.AdamW(raw.parameters(), lr=args.lr, weight_decay=0.0))
    alphas_bar = fu.sd1_alphas_cumprod()
    sub = slice(None, None, max(1, len(z_held) // args.eval_images))

    def evaluate_and_snapshot() -> dict:
        full = loop.step == args.steps
        figures = evaluate(ema, z_held if full else z_held[sub], held_style if full else held_style[sub], alphas_bar)
        loop.snapshot(lambda path: fu.save_film_unet(copy.deepcopy(ema).cpu(), path, half=True), figures)
        return figures
    loop.evaluate = evaluate_and_snapshot
    gen, dev = loop.gen, loop.device
    for step in loop:
        idx = torch.randint(0, len(z_train), (args.batch,), generator=gen)
        t, noise, xt = noised_batch(z_train[idx], alphas_bar, gen, args.low_noise, args.low_noise_t)
        style = draw_styles(idx, (text_train, image_train), args.style_dropout, gen)[0]
        with loop.autocast():
            pred = model(xt.to(dev), t.float().to(dev), style.to(dev))
        loss = (pred.float() - noise.to(dev)).square().mean()
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    log = loop.log
    ema = ema.cpu()
    fu.save_film_unet(ema, args.out, half=True)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}: held-out eps-MSE {log['final']['eps_mse_mean']:.4f} with the caption, "
          f"{log['final']['eps_mse_mean_none']:.4f} without")


if __name__ == "__main__":
    main()
