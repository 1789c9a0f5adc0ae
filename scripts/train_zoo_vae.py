"""Train the demo zoo's VAE: a TAESD-layout autoencoder (ComfyUI loads it as an SD1-latent VAE) on the emoji set.

Loss: L1 + MSE on pixels, plus a small penalty that keeps raw latents inside the decoder's soft clamp (|z| < 3).
Half of each batch is decoded from latents with added Gaussian noise (σ = --latent-noise × latent std), so the
decoder stays sensible on the slightly-off latents a diffusion model produces. Images are the data set's renders at
--size (256: the zoo's working size). Training runs on random crops (--crop) for speed, the last --full-frac of the
steps on larger crops (--full-crop). Afterwards scale/shift are calibrated so that SD1-scaled latents (× 0.18215)
have zero mean and unit std on the training set. --init fine-tunes a saved VAE; with --decoder-only its encoder and
scale/shift stay as they are, so its latents do not change and every model trained on them (the DiT, its ControlNet
and importance scorer) stays valid: only the decoding improves. The loop (resume, schedule,
logging, evaluation, `torchrun`) is devkit.train.TrainLoop.

    python scripts/train_zoo_vae.py --init zoo/vae/diffugan-emoji-vae.safetensors \\
        --out zoo/vae/diffugan-emoji-vae.safetensors

Writes the VAE (fp16 safetensors), <out>.json (settings, loss curve, held-out PSNR: every 4th held-out image
during training, all of them at the end) and resumes from <out>.train.pt. Seeded; on CPU the result is
reproducible for the same thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import zoo_data  # noqa: E402

from devkit import metrics  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import taesd  # noqa: E402


@torch.no_grad()
def evaluate(vae, x: torch.Tensor) -> dict:
    vae.eval()
    out = torch.cat([vae.decode_raw(vae.encode_raw(x[i:i + 64])) for i in range(0, len(x), 64)])
    vae.train()
    return {"heldout_psnr_db": metrics.psnr(out, x, low=-1.0), "heldout_l1": float((out.clamp(-1, 1) - x).abs().mean())}


def batch(x: torch.Tensor, n: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(x), (n,), generator=gen)
    b = x[idx]
    if crop < b.shape[-1]:
        i, j = torch.randint(0, b.shape[-1] - crop + 1, (2,), generator=gen).tolist()
        i, j = i // 8 * 8, j // 8 * 8
        b = b[..., i:i + crop, j:j + crop]
    flip = (torch.rand(n, generator=gen) < 0.5).to(b.device)
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
    ap.add_argument("--decoder-only", action="store_true",
                    help="with --init: train the decoder only; the encoder and latent calibration stay the file's")
    args = ap.parse_args(argv)
    if args.decoder_only and args.init is None:
        ap.error("--decoder-only fine-tunes the decoder of a saved VAE: give that VAE with --init")

    torch.manual_seed(args.seed)
    train, _ = zoo_data.load(args.data, "train", args.size)
    held, _ = zoo_data.load(args.data, "heldout", args.size)
    vae = (taesd.load_vae(args.init).requires_grad_(True) if args.init else taesd.TinyAutoencoder()).train()
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     log_every=25, warmup=100, final_lr=0.0, grad_clip=None, threads=args.threads)
    vae = loop.module(vae, "vae", ddp=False)  # encode_raw / decode_raw, not forward: gradients averaged by the loop
    trained = ("taesd_decoder.",) if args.decoder_only else ("taesd_encoder.", "taesd_decoder.")
    for n, p in vae.named_parameters():
        p.requires_grad_(n.startswith(trained))
    opt = loop.optimizer(torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=args.lr))
    before_log = None
    if args.init is not None and args.init.with_suffix(".json").exists():  # the runs this one continues
        before_log = json.loads(args.init.with_suffix(".json").read_text())
        loop.log["previous_runs"] = before_log.get("previous_runs", []) + [
            {**before_log["settings"], "heldout_psnr_db": before_log["final"]["heldout_psnr_db"]}]
    train, held = train.to(loop.device), held.to(loop.device)
    loop.evaluate = lambda: evaluate(vae, held if loop.step == args.steps else held[::4])
    gen = loop.gen
    for step in loop:
        full = step >= args.steps * (1 - args.full_frac)
        x = batch(train, args.full_batch if full else args.batch, args.full_crop if full else args.crop, gen)
        with torch.set_grad_enabled(not args.decoder_only):
            r = vae.encode_raw(x)
        half = len(x) // 2
        noise = torch.randn(r.shape, generator=gen).to(r.device) * args.latent_noise * r.detach().std()
        noise[:half] = 0
        y = vae.decode_raw(r + noise)
        loss_px = (y - x).abs().mean() + (y - x).square().mean()
        loss = loss_px if args.decoder_only else loss_px + args.latent_penalty * (
            F.relu(r.abs() - 2.5).square().mean() * 100 + r.square().mean())
        loop.backward(loss, opt)
        loop.record(loss=loss_px)
    if not loop.finish():
        return
    log = loop.log
    vae.eval()
    stats = ("latent_sd1_mean", "latent_sd1_std", "latent_raw_absmax_p999")
    same_data = before_log is not None and all(before_log["settings"].get(k) == str(getattr(args, k))
                                               for k in ("data", "size"))
    if args.decoder_only and same_data and all(k in before_log for k in stats):
        # the encoder and its calibration are the --init file's, bit for bit, and the images are the ones its
        # statistics were taken on: so the statistics are its
        log.update({k: before_log[k] for k in stats})
    else:
        with torch.no_grad():
            raw = torch.cat([vae.encode_raw(train[i:i + 128]) for i in range(0, len(train), 128)])
            if not args.decoder_only:  # the decoder-only fine-tune keeps the latents, and so their calibration
                vae.calibrate(raw)
            sd1 = (raw / vae.vae_scale + vae.vae_shift) * taesd.SD1_SCALE
            log["latent_sd1_mean"], log["latent_sd1_std"] = float(sd1.mean()), float(sd1.std())
            log["latent_raw_absmax_p999"] = (float(raw.abs().flatten().quantile(0.999)) if raw.numel() < 2 ** 24
                                             else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vae = vae.cpu()
    taesd.save_vae(vae, args.out, {"trained_on": f"DiffuGAN emoji at {args.size} px "
                                                 "(twemoji + noto + openmoji SVG renders, train split)",
                                   "steps": str(args.steps),
                                   "heldout_psnr_db": f"{log['final']['heldout_psnr_db']:.2f}"})
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}: held-out PSNR {log['final']['heldout_psnr_db']:.2f} dB")


if __name__ == "__main__":
    main()
