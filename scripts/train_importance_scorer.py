"""Distil the learned importance scorer from what the refiner actually does.

Target (per draft): where a full, uniform refinement changes the draft. Drafts are emoji of the zoo set made coarse
(down to 16-40 px and back up to the DiT's working size, as a fast generator's blurry output; only the drawing
styles its labels know) and, with --generated-share P, for a
share P of them generated drafts instead: the zoo's text -> image path on the emoji's caption (zoo CLIP style, null
label, --generated-steps Euler steps from noise, guidance 3, decoded by the zoo VAE), the drafts the text -> image
workflow refines. Each draft is encoded by the zoo VAE; the zoo DiT
refines each one uniformly (Euler, --steps steps at --strength, guidance --cfg, its class label, seeded noise), and
the target is the per-latent-pixel change ||refined - draft|| over the 4 channels: a 16x16 map (1/8 of the image),
normalised by its 99th percentile. The scorer (models/importance.LearnedScorer, MobileNetV3-style) learns it from
the draft pixels alone with an MSE loss on sigmoid outputs.

Held-out figure: Spearman rank correlation with the target on held-out drafts (per image, then the mean), for the
learned scorer and for the analytic scorer (its map area-pooled to the same 16x16 grid); with generated drafts also
for the coarse and the generated ones apart.

    python scripts/train_importance_scorer.py --dit zoo/dit/diffugan-emoji-dit-256.safetensors \\
        --vae zoo/vae/diffugan-emoji-vae-256.safetensors --out zoo/diffugan_importance/diffugan-emoji-scorer.safetensors

Writes the scorer (safetensors, config in the metadata), <out>.json (settings, loss curve, held-out figures).
Targets are cached under <data>/ (they cost most of the run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import metrics  # noqa: E402
import zoo_data  # noqa: E402
from download_models import sha256_of  # noqa: E402

from devkit import sampling  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import dit, importance, region, taesd  # noqa: E402

def coarse(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image down to a random 16-40 px and back up (bicubic): drafts of varying blurriness."""
    sizes = [int(torch.randint(16, 41, (1,), generator=gen)) for _ in range(len(x))]
    return torch.cat([region.coarse(img[None], px) for img, px in zip(x, sizes)]).clamp(-1, 1)


@torch.no_grad()
def refinement_change(model: dit.DiT, vae: taesd.TinyAutoencoder, drafts: torch.Tensor, labels: torch.Tensor,
                      steps: int, strength: float, cfg: float, gen: torch.Generator, what: str = "") -> torch.Tensor:
    """The target: drafts (N, 3, H, W) in [-1, 1] at the DiT's working size, encoded by the VAE and refined
    uniformly by the DiT (Euler, `steps` from `strength`, guidance `cfg`, class `labels`, noise from `gen`) ->
    the per-latent-pixel change ||refined - draft|| over the channels, (N, 1, H/8, W/8)."""
    sigmas, ts = sampling.img2img_schedule(steps, strength)
    targets, t0, n = [], time.time(), len(drafts)
    for i in range(0, n, 32):
        z = vae.encode(drafts[i:i + 32]) * taesd.SD1_SCALE
        noise = torch.randn(z.shape, generator=gen)
        refined, _ = sampling.euler_img2img(model, z, labels[i:i + 32], sigmas, ts, cfg, noise)
        targets.append((refined - z).norm(dim=1, keepdim=True))
        print(f"{what} targets {min(i + 32, n)}/{n} ({time.time() - t0:.0f}s)".lstrip(), flush=True)
    return torch.cat(targets)


@torch.no_grad()
def make_targets(args, split: str, n: int) -> dict:
    files = args.dit.read_bytes() + args.vae.read_bytes()
    if args.generated_share > 0:
        files += args.generated_clip.read_bytes() + f"{args.generated_share}-{args.generated_steps}".encode()
    key = hashlib.sha256(files).hexdigest()[:12]
    cache = args.data / f"scorer-targets-{split}-{n}-{args.steps}-{args.strength}-{args.cfg}-{key}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)  # our own file; tensors only
    vae, model = taesd.load_vae(args.vae), dit.load_dit(args.dit)
    x, records = zoo_data.load(args.data, split, 8 * model.config.input_size)  # at the DiT's working size
    known = zoo_data.known_styles(model.config.num_classes)  # the drawing styles its labels know
    allowed = torch.tensor([i for i, r in enumerate(records) if r["style"] in known])
    gen = torch.Generator().manual_seed(args.seed + (split == "heldout"))
    pick = allowed[torch.randperm(len(allowed), generator=gen)[:n]]
    x, labels = x[pick], torch.tensor([zoo_data.zoo_label(records[i]) for i in pick])
    drafts = coarse(x, gen)
    generated = torch.zeros(n, dtype=torch.bool)
    if args.generated_share > 0:  # text -> image drafts on the emoji's caption (zoo-CLIP style, null label)
        import train_zoo_dit
        from diffugan.models import clip_style as cs

        generated[torch.randperm(n, generator=gen)[:round(args.generated_share * n)]] = True
        clip = cs.load_clip(args.generated_clip)
        style = train_zoo_dit.style_vectors(clip, args.generated_clip, args.data, split)[0][pick, 0][generated]
        shape = (model.config.in_channels, x.shape[-2] // 8, x.shape[-1] // 8)
        noise = torch.cat([torch.randn((len(style[i:i + 32]), *shape), generator=gen)  # drawn 32 at a time
                           for i in range(0, len(style), 32)])
        drafts[generated] = train_zoo_dit.text_to_image(model, vae, style, noise, args.generated_steps, 3.0, chunk=32)
        print(f"{split}: {int(generated.sum())} generated drafts", flush=True)
    targets = refinement_change(model, vae, drafts, labels, args.steps, args.strength, args.cfg, gen, split)
    out = {"drafts": drafts, "targets": targets, "generated": generated}
    torch.save(out, cache)
    return out


def normalise(t: torch.Tensor) -> torch.Tensor:
    q = torch.quantile(t.flatten(1), 0.99, dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (t / q).clamp(0, 1)


@torch.no_grad()
def analytic_ranks(drafts: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-draft Spearman of the analytic scorer (area-pooled to the target grid); computed once, it never changes."""
    pix = drafts * 0.5 + 0.5
    maps = torch.cat([F.adaptive_avg_pool2d(importance.analytic_importance(pix[i:i + 16]), targets.shape[-2:])
                      for i in range(0, len(pix), 16)])
    return [metrics.spearman(a, b) for a, b in zip(maps, targets)]


@torch.no_grad()
def rank_scores(scorer, drafts: torch.Tensor, targets: torch.Tensor, rho_a: list[float],
                generated: torch.Tensor | None = None) -> dict:
    pix = drafts * 0.5 + 0.5
    dev = next(scorer.parameters()).device
    learned = torch.cat([scorer(pix[i:i + 64].to(dev)).float().cpu() for i in range(0, len(pix), 64)])
    rho_l = [metrics.spearman(a, b) for a, b in zip(learned, targets)]
    out = {"spearman_learned": sum(rho_l) / len(rho_l), "spearman_analytic": sum(rho_a) / len(rho_a),
           "learned_beats_analytic_on": sum(a > b for a, b in zip(rho_l, rho_a)) / len(rho_l)}
    if generated is not None and 0 < int(generated.sum()) < len(generated):
        for kind, keep in (("generated", generated), ("coarse", ~generated)):
            idx = keep.nonzero().flatten().tolist()
            out[f"spearman_learned_{kind}"] = sum(rho_l[i] for i in idx) / len(idx)
            out[f"spearman_analytic_{kind}"] = sum(rho_a[i] for i in idx) / len(idx)
            out[f"drafts_{kind}"] = len(idx)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--dit", type=Path, required=True)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-drafts", type=int, default=1536)
    ap.add_argument("--heldout-drafts", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="refinement steps for the targets")
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--generated-share", type=float, default=0.0, help="share of drafts made by text -> image")
    ap.add_argument("--generated-clip", type=Path, default=None, help="the zoo CLIP (for --generated-share)")
    ap.add_argument("--generated-steps", type=int, default=12)
    args = ap.parse_args(argv)
    if args.generated_share > 0 and args.generated_clip is None:
        ap.error("--generated-share needs --generated-clip (the CLIP the style-conditioned DiT was trained with)")

    torch.manual_seed(args.seed)
    train = make_targets(args, "train", args.train_drafts)
    held = make_targets(args, "heldout", args.heldout_drafts)
    x_train, y_train = train["drafts"] * 0.5 + 0.5, normalise(train["targets"])
    rho_analytic = analytic_ranks(held["drafts"], held["targets"])
    scorer = importance.LearnedScorer().train()
    loop = TrainLoop(args.out, steps=args.train_steps, seed=args.seed, settings=vars(args), eval_every=250,
                     warmup=0, final_lr=0.0, grad_clip=None, threads=args.threads)
    loop.log["params"] = importance.scorer_params(scorer)
    scorer = loop.module(scorer, "scorer")
    opt = loop.optimizer(torch.optim.AdamW(scorer.parameters(), lr=args.lr, weight_decay=1e-4))
    raw = loop.raw(scorer)

    def evaluate() -> dict:
        raw.eval()
        out = rank_scores(raw, held["drafts"], held["targets"], rho_analytic, held.get("generated"))
        raw.train()
        return out

    loop.evaluate = evaluate
    gen = loop.gen
    for step in loop:
        idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
        x, y = x_train[idx], y_train[idx]
        if torch.rand(1, generator=gen) < 0.5:  # mirror: the refiner's change mirrors with the draft
            x, y = x.flip(-1), y.flip(-1)
        with loop.autocast():
            pred = scorer(x.to(loop.device))
        loss = F.mse_loss(torch.sigmoid(pred.float()), y.to(loop.device))
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    scorer, log = raw.cpu(), loop.log
    log["dit_sha256"] = sha256_of(args.dit)  # which DiT the targets came from (the zoo card checks it is shipped)
    scorer.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kinds = "coarse and generated" if args.generated_share > 0 else "coarse"
    importance.save_scorer(scorer, args.out,
                           {"trained_on": f"DiffuGAN emoji drafts ({kinds}), zoo DiT refinement change"})
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    f = log["final"]
    print(f"wrote {args.out}: held-out Spearman learned {f['spearman_learned']:.3f} vs analytic "
          f"{f['spearman_analytic']:.3f}")


if __name__ == "__main__":
    main()
