"""Train the demo zoo's ViT ControlNet: edge structure control for the zoo DiT, the DiT frozen.

Pairs: each emoji of the zoo set (at the DiT's working size, which must be the data set's) and its Canny edges
(kornia, thresholds 0.1 / 0.2, one channel). The control branch (the DiT's first --depth blocks copied,
zero-initialised projections: it starts as a no-op) learns the DiT's own ε-prediction loss with the edges as extra
input; the DiT's weights never change. Each batch draws a token budget from --budgets (tokens picked by edge
density) so the branch also works when it sees only part of the image; labels are dropped 10 % of the time as in the
DiT's training (guidance keeps working). With --coarse-tokens the branch spends short budgets on mixed-resolution
tokens (2x2-merged where edges are sparse; see models/vit_controlnet.py); --init continues from a saved ControlNet
(adding the merged tokens if asked).

Verification on held-out emoji (written to <out>.json):
  - denoising: ε-MSE at t = 100…900 (fixed noise) of the DiT with the ControlNet vs without;
  - following the edges: each held-out emoji made coarse (down to 24 px: its edges are mostly gone), refined at
    strength 0.8 with its own edges as control, then the Canny edges of the decoded result scored against the
    control edges (F1, 1 px tolerance), with the ControlNet (dense, and at a 25 % token budget) vs without.

    python scripts/train_zoo_controlnet.py --dit zoo/dit/diffugan-emoji-dit-256.safetensors \\
        --vae zoo/vae/diffugan-emoji-vae-256.safetensors --style-clip zoo/clip_style/diffugan-emoji-clip.safetensors \\
        --out zoo/diffugan_controlnet/diffugan-emoji-controlnet.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import metrics  # noqa: E402
import train_zoo_dit  # noqa: E402
import zoo_data  # noqa: E402

from devkit import sampling  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import dit, region, taesd  # noqa: E402
from diffugan.models import vit_controlnet as vc  # noqa: E402



def cached_edges(data: Path, split: str) -> torch.Tensor:
    """The Canny edges (the Edges node's default thresholds) of a split's images, (N, 1, H, W) in {0, 1}; cached
    beside the data (kornia's hysteresis takes minutes for a few thousand 256 px images on one core)."""
    from safetensors.torch import load_file, save_file

    cache = data / f"edges-{zoo_data.resolution(data)}-{split}.safetensors"
    if not cache.exists():
        x, _ = zoo_data.load(data, split)
        save_file({"edges": vc.canny_edges(x * 0.5 + 0.5).bool().contiguous()}, str(cache))
    return load_file(str(cache))["edges"].float()


def hook(net: vc.ViTControlNet, hint: torch.Tensor, settings: vc.ControlSettings):
    return lambda tokens, c, grid: net.residuals(tokens, c, net.prepare_hint(hint, grid), grid, settings)


@torch.no_grad()
def denoising(model, net, z, y, hints, alphas_bar) -> dict:
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(z.shape, generator=gen)
    out = {"with": {}, "without": {}}
    for t in train_zoo_dit.EVAL_T:
        ab = alphas_bar[t]
        xt = ab.sqrt() * z + (1 - ab).sqrt() * noise
        tt = torch.full((len(z),), t, dtype=torch.long)
        w, wo = [], []
        for i in range(0, len(z), 64):
            s = slice(i, i + 64)
            w.append(model(xt[s], tt[s], y[s], control=hook(net, hints[s], vc.ControlSettings())))
            wo.append(model(xt[s], tt[s], y[s]))
        out["with"][t] = float((torch.cat(w) - noise).square().mean())
        out["without"][t] = float((torch.cat(wo) - noise).square().mean())
    return {"eps_mse_with_control": sum(out["with"].values()) / len(out["with"]),
            "eps_mse_without_control": sum(out["without"].values()) / len(out["without"]), "per_t": out}


# How edge following is measured (the training log, the model card and the benchmark all read it from here)
EDGE_EVAL = {"draft_px": 24, "strength": 0.8, "steps": 20, "cfg": 3.0}


def follow_edges(model, net, vae, images, y, hints, settings: vc.ControlSettings | None, **kw) -> torch.Tensor:
    """Per-image edge F1 of the refined coarse drafts against their control edges (`refined_edges`' arguments)."""
    return metrics.edge_f1(refined_edges(model, net, vae, images, y, hints, settings, **kw), hints)


@torch.no_grad()
def refined_edges(model, net, vae, images, y, hints, settings: vc.ControlSettings | None, reuse_steps: int = 1,
                  over_steps: float | None = None, **overrides) -> torch.Tensor:
    """Canny edges (N, 1, H, W) of the images made coarse and refined with their edges `hints` as control
    (settings None: no ControlNet; `reuse_steps` > 1: the branch computed at every n-th step, its residuals reused
    between; `over_steps`: the budget spent over steps, this share of it on the highest-priority tokens at every
    step (RotatingBudget's `fixed`); both as the Apply node's).
    The drafts, steps and guidance are EDGE_EVAL's, updated by `overrides` (same keys)."""
    e = EDGE_EVAL | overrides
    cfg = e["cfg"]
    coarse = region.coarse(images, e["draft_px"]).clamp(-1, 1)
    sigmas, ts = sampling.img2img_schedule(e["steps"], e["strength"])
    gen = torch.Generator().manual_seed(99)
    edges = []
    for i in range(0, len(images), 16):
        s = slice(i, i + 16)
        z = vae.encode(coarse[s]) * taesd.SD1_SCALE
        noise = torch.randn(z.shape, generator=gen)
        if settings is None:
            out, _ = sampling.euler_img2img(model, z, y[s], sigmas, ts, cfg, noise)
        else:
            controlled = ControlledDiT(model, net, hints[s], settings, reuse_steps, over_steps)
            out, _ = sampling.euler_img2img(controlled, z, y[s], sigmas, ts, cfg, noise)
        edges.append(vc.canny_edges(vae.decode(out / taesd.SD1_SCALE) * 0.5 + 0.5))
    return torch.cat(edges)


class ControlledDiT(torch.nn.Module):
    """The DiT with a ControlNet attached, as the reference sampler calls it (rows: cond images, then uncond)."""

    def __init__(self, model, net, hint, settings, reuse_steps: int = 1, over_steps: float | None = None):
        super().__init__()
        self.model, self.net, self.hint, self.settings = model, net, hint, settings
        self.config = model.config
        self.reuse = vc.ResidualReuse(reuse_steps)
        self.rotate = None if over_steps is None else vc.RotatingBudget(settings.budget, over_steps)
        self.steps = 0  # the reference sampler calls the model once per step

    def grid(self, x):
        return self.model.grid(x)

    def forward(self, x, t, y=None):
        h = self.hint.repeat(x.shape[0] // self.hint.shape[0], 1, 1, 1)
        step, self.steps = self.steps, self.steps + 1
        if self.rotate is not None:
            def rotating(tokens, c, grid):
                hint = self.net.prepare_hint(h, grid)
                priority = self.net.per_token(hint, self.settings)[0]
                return self.rotate(x.shape, step, priority, grid, lambda only: self.net.residuals(
                    tokens, c, hint, grid, self.settings, None, only))

            return self.model(x, t, y, control=rotating)
        control = hook(self.net, h, self.settings)
        return self.model(x, t, y, control=lambda *a: self.reuse(x.shape, step, lambda: control(*a)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--dit", type=Path, required=True)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--depth", type=int, default=3, help="DiT blocks copied into the control branch")
    ap.add_argument("--init", type=Path, default=None, help="continue from this ControlNet (--depth is ignored)")
    ap.add_argument("--coarse-tokens", action="store_true", help="mixed-resolution tokens for short budgets")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--budgets", default="1.0,0.5,0.25")
    ap.add_argument("--eval-images", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--style-clip", type=Path, default=None,
                    help="the zoo CLIP the DiT's style conditioning was trained on: batches then carry styles as in "
                         "the DiT's training (the branch learns with the prompts the workflows give)")
    ap.add_argument("--style-dropout", type=float, default=0.2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (as train_zoo_dit.py's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.steps,
                     warmup=50, final_lr=0.1, grad_clip=1.0, threads=args.threads, cpu_bf16=args.bf16)
    model = dit.load_dit(args.dit)  # frozen (requires_grad False)
    vae = taesd.load_vae(args.vae)
    size, styles = 8 * model.config.input_size, zoo_data.known_styles(model.config.num_classes)
    if size != zoo_data.resolution(args.data) or styles != tuple(zoo_data.STYLES):
        raise SystemExit(f"--dit {args.dit} works at {size} px on the styles {styles}; the data at {args.data} "
                         f"are {zoo_data.resolution(args.data)} px renders of {zoo_data.STYLES}: train the "
                         "ControlNet for a DiT trained on these data")
    z_train, y_train = train_zoo_dit.cached_latents(args.vae, args.data, "train")
    e_train = cached_edges(args.data, "train")
    z_held, y_held = train_zoo_dit.cached_latents(args.vae, args.data, "heldout")
    x_held, _ = zoo_data.load(args.data, "heldout")
    pick = torch.linspace(0, len(x_held) - 1, args.eval_images).round().long()
    x_eval, y_eval = x_held[pick], y_held[pick]
    e_held = cached_edges(args.data, "heldout")
    e_eval = e_held[pick]

    styles = None
    if args.style_clip is not None:
        clip = cs.load_clip(args.style_clip)
        if model.config.style_dim == 0 or getattr(model, "style_clip", "") != clip.identity:
            raise SystemExit(f"--dit {args.dit} was not trained with the style of --style-clip {args.style_clip}")
        styles = train_zoo_dit.style_vectors(clip, args.style_clip, args.data, "train")

    if args.init is not None:
        net = vc.load_controlnet(args.init)
        net.check_fits(model)
        if args.coarse_tokens and not net.config.coarse_tokens:
            net = net.with_coarse_tokens()
        net = net.train().requires_grad_(True)
    else:
        net = vc.ViTControlNet.from_dit(model, args.depth, hint_channels=1, coarse_tokens=args.coarse_tokens).train()
    net = loop.module(net, "controlnet", ddp=False)  # called through the frozen DiT's hook, not its forward
    model, dev = model.to(loop.device), loop.device
    opt = loop.optimizer(torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0))
    alphas_bar = torch.cumprod(1 - dit.linear_betas(), 0).float()
    budgets = [float(b) for b in args.budgets.split(",")]
    if args.init is not None and args.init.with_suffix(".json").exists():  # the runs this one continues
        before_log = json.loads(args.init.with_suffix(".json").read_text())
        loop.log["previous_runs"] = before_log.get("previous_runs", []) + [before_log["settings"]]
    if not loop.ckpt.exists() and loop.is_main:  # before training, on the CPU like every evaluation here
        before = denoising(model, net, z_held, y_held, e_held, alphas_bar)
        loop.log["evals"].append({"step": 0, **{k: v for k, v in before.items() if k != "per_t"}})
        print(json.dumps(loop.log["evals"][-1]), flush=True)
    gen = loop.gen
    for step in loop:
        idx = torch.randint(0, len(z_train), (args.batch,), generator=gen)
        z0, y, hint = z_train[idx], y_train[idx], e_train[idx]
        t, noise, xt = train_zoo_dit.noised_batch(z0, alphas_bar, gen)
        y, style = train_zoo_dit.draw_conditioning(y, idx, styles, model.config, args.style_dropout, gen)
        # the budget of this step: the same on every process (their branches then train the same token layout)
        budget = budgets[int(torch.randint(0, len(budgets), (1,), generator=torch.Generator().manual_seed(step)))]
        settings = vc.ControlSettings(budget=budget, edge_priority=1.0)
        with loop.autocast():
            pred = model(xt.to(dev), t.to(dev), y.to(dev), None if style is None else style.to(dev),
                         control=hook(net, hint.to(dev), settings))
        loss = (pred.float() - noise.to(dev)).square().mean()
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    log, model, net = loop.log, model.cpu(), net.cpu()
    net.eval()
    after = denoising(model, net, z_held, y_held, e_held, alphas_bar)
    log["evals"].append({"step": args.steps, **{k: v for k, v in after.items() if k != "per_t"}})
    log["denoising_per_t"] = after["per_t"]
    f1_without = follow_edges(model, net, vae, x_eval, y_eval, e_eval, None)
    f1_with = follow_edges(model, net, vae, x_eval, y_eval, e_eval, vc.ControlSettings())
    f1_quarter = follow_edges(model, net, vae, x_eval, y_eval, e_eval, vc.ControlSettings(budget=0.25,
                                                                                         edge_priority=1.0))
    log["edge_f1"] = {"without_controlnet": float(f1_without.mean()), "with_controlnet": float(f1_with.mean()),
                      "with_controlnet_budget_25": float(f1_quarter.mean()),
                      "images": args.eval_images, "tolerance_px": 1, **EDGE_EVAL}
    log["final"] = log["evals"][-1] | {"edge_f1": log["edge_f1"]}
    print(json.dumps(log["final"]), flush=True)
    vc.save_controlnet(net, args.out, base=args.dit.name, half=True)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
