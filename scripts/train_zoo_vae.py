"""Train the demo zoo's VAE: a TAESD-layout autoencoder (ComfyUI loads it as an SD1-latent VAE) on the emoji set.

Loss: L1 + MSE on pixels, plus a small penalty that keeps raw latents inside the decoder's soft clamp (|z| < 3).
Half of each batch is decoded from latents with added Gaussian noise (σ = --latent-noise × latent std), so the
decoder stays sensible on the slightly-off latents a diffusion model produces. Images are the stored 64 px
emoji upsampled to --size (128: the zoo's working size). Training runs on random crops (--crop) for speed, the last
--full-frac of the steps on larger crops (--full-crop). Afterwards scale/shift are calibrated
so that SD1-scaled latents (× 0.18215) have zero mean and unit std on the training set.

    python scripts/train_zoo_vae.py --steps 1500 --out zoo/diffugan-emoji-vae.safetensors

Writes the VAE (fp16 safetensors), <out>.json (settings, loss curve, held-out PSNR: every 4th held-out image
during training, all of them at the end) and resumes from
<out>.train.pt. Seeded; on CPU the result is reproducible for the same thread count.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import zoo_data  # noqa: E402

from diffugan.models import taesd  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, for pixels in [-1, 1]."""
    mse = (a.clamp(-1, 1) - b).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate(vae, x: torch.Tensor) -> dict:
    vae.eval()
    out = torch.cat([vae.decode_raw(vae.encode_raw(x[i:i + 64])) for i in range(0, len(x), 64)])
    vae.train()
    return {"heldout_psnr_db": float(psnr(out, x).mean()), "heldout_l1": float((out.clamp(-1, 1) - x).abs().mean())}


def batch(x: torch.Tensor, n: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(x), (n,), generator=gen)
    b = x[idx]
    if crop < b.shape[-1]:
        i, j = torch.randint(0, b.shape[-1] - crop + 1, (2,), generator=gen).tolist()
        i, j = i // 8 * 8, j // 8 * 8
        b = b[..., i:i + crop, j:j + crop]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], b.flip(-1), b)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--size", type=int, default=256, help="image size (the stored renders, or downscaled from them)")
    ap.add_argument("--init", type=Path, default=None, help="fine-tune this saved VAE instead of starting afresh")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--full-frac", type=float, default=0.25, help="last fraction of steps on --full-crop crops")
    ap.add_argument("--full-crop", type=int, default=64)
    ap.add_argument("--full-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--latent-noise", type=float, default=0.1)
    ap.add_argument("--latent-penalty", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    train, _ = zoo_data.load(args.data, "train", args.size)
    held, _ = zoo_data.load(args.data, "heldout", args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    vae = (taesd.load_vae(args.init).requires_grad_(True) if args.init else taesd.TinyAutoencoder()).train()
    params = [p for n, p in vae.named_parameters() if not n.startswith("vae_")]
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 *
                                              (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    gen = torch.Generator().manual_seed(args.seed)
    log = {"settings": {k: str(v) for k, v in vars(args).items()}, "curve": [], "evals": []}
    ckpt = args.out.with_suffix(".train.pt")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)  # our own file; tensors only
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        step = int(state["step"])
        log = json.loads(state["log"])
        print(f"resumed at step {step}")
    t0 = time.time()
    while step < args.steps:
        full = step >= args.steps * (1 - args.full_frac)
        x = batch(train, args.full_batch if full else args.batch, args.full_crop if full else args.crop, gen)
        r = vae.encode_raw(x)
        half = len(x) // 2
        noise = torch.randn(r.shape, generator=gen) * args.latent_noise * r.detach().std()
        noise[:half] = 0
        y = vae.decode_raw(r + noise)
        loss_px = (y - x).abs().mean() + (y - x).square().mean()
        loss = loss_px + args.latent_penalty * F.relu(r.abs() - 2.5).square().mean() * 100 \
            + args.latent_penalty * r.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 25 == 0:
            log["curve"].append({"step": step, "loss": float(loss_px.detach()), "sec": round(time.time() - t0, 1)})
            print(f"step {step} loss {float(loss_px.detach()):.4f} ({time.time() - t0:.0f}s)", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            log["evals"].append({"step": step, **evaluate(vae, held if step == args.steps else held[::4])})
            print(log["evals"][-1], flush=True)
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "step": step, "log": json.dumps(log)}, ckpt)

    vae.eval()
    with torch.no_grad():
        raw = torch.cat([vae.encode_raw(train[i:i + 128]) for i in range(0, len(train), 128)])
        vae.calibrate(raw)
        sd1 = (raw / vae.vae_scale + vae.vae_shift) * taesd.SD1_SCALE
        log["latent_sd1_mean"], log["latent_sd1_std"] = float(sd1.mean()), float(sd1.std())
        log["latent_raw_absmax_p999"] = float(raw.abs().flatten().quantile(0.999)) if raw.numel() < 2 ** 24 else None
    log["final"] = log["evals"][-1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    taesd.save_vae(vae, args.out, {"trained_on": f"DiffuGAN emoji at {args.size} px "
                                                 "(twemoji + noto + openmoji SVG renders, train split)",
                                   "steps": str(args.steps),
                                   "heldout_psnr_db": f"{log['final']['heldout_psnr_db']:.2f}"})
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}: held-out PSNR {log['final']['heldout_psnr_db']:.2f} dB")


if __name__ == "__main__":
    main()
