"""Train a style mapper: (CLIP style embedding, w) -> W+ offset, for one StyleGAN and one CLIP.

The StyleCLIP mapper objective on the generator's own samples: draw w_a and w_b, take the CLIP image embedding t
of G(w_b), and train M so that CLIP sees t in G(w_a + M(t, w_a)), with an L2 tether on the offset:

    loss = 1 - cos(CLIP(G(w_a + M(t, w_a))), t) + tether * mean((offset / std_w)^2)

Only image embeddings are used in training; at run time a text embedding drives the mapper (CLIP aligns the two).
Held-out pairs (fixed, seeded) are scored every --eval-every steps: mean similarity with the mapper vs without.
With --prompts, the text-driven gain is reported too: similarity of G(w + M(text, w)) to the text vs of G(w).

    python scripts/train_style_mapper.py --stylegan ffhq.pkl --clip ViT-B-32.bin \
        --out models/diffugan_mappers/m.safetensors
    torchrun --nproc_per_node 4 scripts/train_style_mapper.py …       # DistributedDataParallel, same script
The loop (resume, logging, evaluation, torchrun) is devkit.train.TrainLoop.

Writes the mapper (safetensors with its config and the identities of the generator and CLIP), <out>.json (settings,
loss curve, held-out figures) and <out>.png (loss curve). Resumes from <out>.train.pt when it exists.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)

from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import stylegan as sg  # noqa: E402


def sample_batch(G, clip, n: int, gen: torch.Generator, psi: float, device):
    z = torch.randn(2 * n, G.z_dim, generator=gen).to(device)
    c = None
    if G.c_dim:
        c = torch.nn.functional.one_hot(torch.randint(0, G.c_dim, (2 * n,), generator=gen), G.c_dim).float().to(device)
    with torch.no_grad():
        w = G.mapping(z, c, truncation_psi=psi)
        targets = clip.encode_images(cs.render_for_clip(G, w[n:]))
    return w[:n], targets


def evaluate(mapper, G, clip, held, prompts_emb, text_ws) -> dict:
    m = mapper.module if hasattr(mapper, "module") else mapper
    out = {}
    with torch.no_grad():
        w, t = held  # pairs: each w is steered toward the image embedding of another sample
        zero = cs.clip_similarity(G, clip, w, t).mean()
        mapped = cs.clip_similarity(G, clip, w + m(t, w), t).mean()
        out.update(heldout_sim_without=float(zero), heldout_sim_with=float(mapped))
        if prompts_emb is not None:
            before, after = [], []
            for e in prompts_emb:
                before.append(float(cs.clip_similarity(G, clip, text_ws, e).mean()))
                after.append(float(cs.clip_similarity(G, clip, text_ws + m(e, text_ws), e).mean()))
            out.update(text_sim_without=sum(before) / len(before), text_sim_with=sum(after) / len(after))
    return out


def plot(curve: list[tuple[int, float]], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps, losses = [s for s, _ in curve], [v for _, v in curve]
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    pts = [(pad + (w - 2 * pad) * (s - steps[0]) / max(1, steps[-1] - steps[0]),
            h - pad - (h - 2 * pad) * (v - lo) / span) for s, v in curve]
    d.rectangle([pad, pad, w - pad, h - pad], outline="grey")
    d.line(pts, fill="navy", width=2)
    d.text((pad, 10), title, fill="black")
    d.text((pad, h - pad + 5), f"step {steps[0]}", fill="black")
    d.text((w - pad - 60, h - pad + 5), f"step {steps[-1]}", fill="black")
    d.text((5, pad - 12), f"{hi:.4f}", fill="black")
    d.text((5, h - pad), f"{lo:.4f}", fill="black")
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stylegan", type=Path, required=True, help="NVIDIA .pkl or DiffuGAN .safetensors")
    ap.add_argument("--clip", type=Path, required=True, help="open_clip .bin / .safetensors")
    ap.add_argument("--clip-arch", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="mapper .safetensors to write")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8, help="per process")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tether", type=float, default=0.1)
    ap.add_argument("--psi", type=float, default=0.7, help="truncation of training samples")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--prompts", default="", help="';'-separated prompts for the text-driven held-out figure")
    ap.add_argument("--note", default="", help="free text recorded in the log (e.g. 'random-weight models')")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     log_every=10, warmup=0, final_lr=1.0, grad_clip=None)  # constant learning rate
    device = loop.device

    G = sg.load_stylegan(args.stylegan).to(device)
    clip = cs.load_clip(args.clip, args.clip_arch).to(device)
    config = cs.MapperConfig(clip_dim=clip.embed_dim, w_dim=G.w_dim, num_ws=G.num_ws, hidden=args.hidden,
                             layers=args.layers, clip=clip.identity, generator=sg.describe(G, args.stylegan.name))
    mapper = cs.StyleMapper(config).to(device)
    mean, std = cs.w_statistics(G.cpu(), seed=args.seed, truncation_psi=args.psi)
    G.to(device)
    mapper.w_mean.copy_(mean)
    mapper.w_std.copy_(std)
    model = loop.module(mapper, "mapper")
    opt = loop.optimizer(torch.optim.Adam(mapper.parameters(), lr=args.lr))

    held_gen = torch.Generator().manual_seed(10_000 + args.seed)  # the same held-out pairs on every run and rank
    held = sample_batch(G, clip, args.heldout, held_gen, args.psi, device)
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    prompts_emb = clip.encode_texts(prompts).detach() if prompts else None
    text_ws = sample_batch(G, clip, args.heldout, held_gen, args.psi, device)[0]

    loop.evaluate = lambda: evaluate(mapper, G, clip, held, prompts_emb, text_ws)
    if not loop.ckpt.exists() and loop.is_main:
        loop.log["evals"].append({"step": 0, **loop.evaluate()})
    for _ in loop:
        w, t = sample_batch(G, clip, args.batch, loop.gen, args.psi, device)
        loss, _ = cs.mapper_loss(model, G, clip, w, t, args.tether)
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    log = loop.log
    log["seconds"] = log["curve"][-1]["sec"] if log["curve"] else 0.0
    cs.save_mapper(mapper, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    plot([(c["step"], c["loss"]) for c in log["curve"]], args.out.with_suffix(".png"),
         f"style mapper loss ({args.out.name})")
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")

if __name__ == "__main__":
    main()
