"""Train a small zoo GANformer (models/ganformer.py) on the emoji set, steered by the zoo CLIP's text embeddings, and
measure how good its attention is as an importance map.

The generator: dorarad/gansformer's `Generator` with its `--ganformer-default` synthesis (duplex attention, k-means
centroids, layer norm, multiplicative integration, 'resnet' blocks), CPU-sized: --size px (64), --components local
latent components plus the global one, z = w = --z-dim per component, attention at the --attention resolutions
(16 and 32 px), channel base / max as the zoo StyleGAN's. Conditional as the zoo StyleGAN is (NVlabs' layout,
`c_dim` = the CLIP's embedding size): the label c is a unit CLIP embedding, which the mapping's `embed` layer takes
as it would a one-hot class, concatenated to the global component's z. The mapping is a plain MLP (--mapping-layers)
with self-attention between the local components (`ltnt2ltnt`) and their position embeddings; not the residual one
of --ganformer-default, which needs equal widths and so cannot take the label (the conditional layout checked
against the reference is the plain one: devkit/ganformer_parity.py's `simplex`).

Training is the zoo StyleGAN's (scripts/train_zoo_stylegan.py, imported, not copied): labels per sample (a caption
phrasing's embedding, one time in three the image's own, none --label-dropout of the time), its residual projection
discriminator, DiffAugment, non-saturating logistic loss, lazy R1, StyleGAN2-ADA's EMA, constant learning rates.
Style mixing as the reference's loss does it (from a random layer on, every component's w from a second z; per
sample with probability --mixing); w_avg tracked as the reference's mapping tracks it (mean over the batch and the
components). Held-out figures every --eval-every steps as the StyleGAN's (train_zoo_clip.judge_text_to_image: CLIP
score and Fréchet distance on zoo-CLIP features, with the prompt and unprompted); at the end also with truncation
0.7 toward each prompt's mean ws.

The file is a training snapshot in the reference's own pickle layout (dict(dataset_args, G, D, Gs) of persistence
records, written by devkit.ganformer_parity.write_snapshot; D is a placeholder: this discriminator is not the
reference's), so `models.ganformer.load_ganformer` and the DiffuGAN GANformer Loader read it (Gs, the EMA). It also
carries `diffugan: {style_clip: …}`, the CLIP whose embeddings are its labels (the reference's loader ignores it).

Attention as importance (at the end, and `importance_comparison` for a test or `--finish SNAPSHOT`): the scorer's own
held-out metric (scripts/train_importance_scorer.py). On --importance-drafts held-out captions whose drawing style
the DiT's labels know, the GANformer draws drafts (ψ 1); each is upsampled to the DiT's working size, encoded by the
zoo VAE and refined uniformly by the zoo DiT (its refinement_change: 10 Euler steps from strength 0.6, guidance 3,
the emoji's class label); the target is where the refinement changes the draft. Per draft, the Spearman rank
correlation of the target with: the attention's ownership map (per pixel the probability of its most likely local
component: 1 where one component clearly owns the pixel; the Generate node's component -1) of the last attention
layer and of the mean over all attention layers, and 1 minus each (the borders between components; its Spearman is
exactly minus the map's); the analytic scorer; the learned scorer (--scorer). Each map is area-pooled to the
target's 1/8 grid, as the scorer's trainer does.

    python scripts/train_zoo_ganformer.py --clip zoo/clip_style/diffugan-emoji-clip.safetensors \\
        --out .zoo/ganformer/diffugan-emoji-ganformer.pkl

Writes the snapshot (.pkl), <out>.json (settings, loss curve, evaluations, final, importance), <out>-samples.png
(held-out captions) and <out>-attention.png (drafts over their ownership maps); resumes from <out>.train.pt; at
every evaluation before the last step <out stem>.latest.pkl (+ .json). `--finish <snapshot.pkl> --clip …` computes
the end-of-run figures, sheets and comparison for any snapshot (a mid-run one, to ship it) into its .json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import train_importance_scorer as tis  # noqa: E402
import train_zoo_clip as tzc  # noqa: E402
import train_zoo_dit  # noqa: E402
import train_zoo_stylegan as tzs  # noqa: E402
import zoo_data  # noqa: E402

from devkit import metrics  # noqa: E402
from devkit.ganformer_parity import write_snapshot  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import dit, importance, taesd  # noqa: E402
from diffugan.models import ganformer as gf  # noqa: E402

ZOO = ROOT / "zoo"
# the refiner the learned scorer was distilled from, and its VAE (zoo/README.md, the scorer's card)
DEFAULT_DIT = ZOO / "dit" / "diffugan-emoji-dit-256.safetensors"
DEFAULT_VAE = ZOO / "vae" / "diffugan-emoji-vae-256.safetensors"
DEFAULT_SCORER = ZOO / "diffugan_importance" / "diffugan-emoji-scorer.safetensors"


def generator_config(c_dim: int, size: int = 64, components: int = 4, z_dim: int = 64, channel_base: int = 2048,
                     channel_max: int = 128, attention: tuple[int, int] = (16, 32), mapping_layers: int = 4,
                     heads: int = 1) -> gf.GANformerConfig:
    """The reference's --ganformer-default synthesis, small; attention at the resolutions attention[0]..[1]."""
    lo, hi = (int(math.log2(r)) for r in attention)
    mapping = dict(num_layers=mapping_layers, resnet=False, ltnt2ltnt=True, transformer=True, use_pos=True,
                   num_heads=heads)
    synthesis = dict(architecture="resnet", style=True, local_noise=True, transformer=True, use_pos=True,
                     num_heads=heads, start_res=lo, end_res=hi + 1, norm="layer", integration="mul", kmeans=True,
                     kmeans_iters=1, pos_type="sinus", pos_init="uniform", pos_directions_num=2,
                     channel_base=channel_base, channel_max=channel_max)
    return gf.GANformerConfig(z_dim, c_dim, z_dim, components + 1, size, 3, mapping, synthesis)


def init_kwargs(config: gf.GANformerConfig, lr: float) -> dict:
    """The Generator's constructor arguments as the reference's training records them (its _init_kwargs)."""
    return dict(z_dim=config.z_dim, w_dim=config.w_dim, k=config.k, component_dropout=0.0,
                opt_args=dict(class_name="torch.optim.Adam", lr=lr, betas=[0, 0.99], eps=1e-8),
                mapping_kwargs=dict(config.mapping_kwargs), synthesis_kwargs=dict(config.synthesis_kwargs),
                c_dim=config.c_dim, img_resolution=config.img_resolution, img_channels=config.img_channels)


def save_snapshot(path: Path, G_ema: gf.Generator, G: gf.Generator, lr: float, style_clip: str) -> None:
    """The reference's snapshot layout: the EMA as Gs (what the loaders use), the trained generator as G."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ema, raw = (copy.deepcopy(m).cpu().eval().requires_grad_(False) for m in (G_ema, G))
    write_snapshot(path, ema, init_kwargs(ema.config, lr), G_train=raw,
                   extra={"diffugan": {"style_clip": style_clip, "trained_by": "scripts/train_zoo_ganformer.py"}})


# --------------------------------------------------------------------------------------------------------------
# Generating
# --------------------------------------------------------------------------------------------------------------
def generate(G: gf.Generator, c: torch.Tensor, gen: torch.Generator, mixing: float) -> tuple:
    """A training batch for labels c: images (noise drawn from gen) and the ws before mixing."""
    z = torch.randn(len(c), G.k, G.z_dim, generator=gen).to(c.device)
    ws = G.mapping(z, c, G.pos)
    mixed = ws
    if mixing > 0:  # the reference's style mixing: the layers from a random one on, of every component
        mixed = tzs.mix_layers(ws, lambda: G.mapping(torch.randn(z.shape, generator=gen).to(c.device), c, G.pos), gen,
                               mixing, dim=2)
    return G.synthesis(mixed, G.pos, noise_mode="random", generator=gen), ws


@torch.no_grad()
def conditional_ws_avg(G: gf.Generator, c: torch.Tensor, samples: int = 256, seed: int = 0) -> torch.Tensor:
    """The mean w of every component for each label c (N, c_dim) -> (N, k, w_dim), over `samples` z from a fixed
    seed (as models.stylegan.conditional_w_avg: truncating toward the global w_avg would pull toward no prompt)."""
    z = torch.randn(samples, G.k, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(c.device)
    labels, index = torch.unique(c, dim=0, return_inverse=True)
    return torch.stack([G.mapping(z, label.expand(samples, -1), G.pos)[:, :, 0].mean(0) for label in labels])[index]


@torch.no_grad()
def sample_images(G: gf.Generator, style: torch.Tensor | None, n: int, seed: int, psi: float = 1.0,
                  attention: bool = False):
    """n images in 0..1 for labels `style` (n, D) (None: c = 0, unprompted), fixed z from `seed`, noise const;
    psi < 1 truncates toward each prompt's mean ws. With `attention`, also the attention maps
    (N, k-1, layers, heads, H, W)."""
    dev = next(G.parameters()).device
    z = torch.randn(n, G.k, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    c = (torch.zeros(n, G.c_dim) if style is None else style).to(dev)
    images, maps = [], []
    for i in range(0, n, 64):
        ws = G.mapping(z[i:i + 64], c[i:i + 64], G.pos)
        if psi != 1:
            ws = conditional_ws_avg(G, c[i:i + 64])[:, :, None].lerp(ws, psi)
        img, att = G.synthesis(ws, G.pos, noise_mode="const", return_attention=True)
        images.append(img.float().cpu())
        maps.append(att.float().cpu())
    images = (torch.cat(images) * 0.5 + 0.5).clamp(0, 1)
    return (images, torch.cat(maps)) if attention else images


def ownership(attention: torch.Tensor, layer: int | None = -1) -> torch.Tensor:
    """(N, k-1, layers, heads, H, W) -> (N, 1, H, W): per pixel the probability of its most likely component (the
    Generate node's 'attention' output with component -1)."""
    return gf.attention_masks(attention, layer).amax(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------------------
# Attention as importance, on the learned scorer's own held-out metric
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def importance_comparison(G: gf.Generator, clip: cs.StyleCLIP, data: Path, dit_path: Path, vae_path: Path,
                          scorer_path: Path | None, drafts: int = 256, steps: int = 10, strength: float = 0.6,
                          cfg: float = 3.0, seed: int = 0) -> dict:
    """Per held-out draft of G, the Spearman rank correlation of where the DiT's uniform refinement changes it
    (train_importance_scorer.refinement_change) with the attention maps, the analytic scorer and the learned one
    (train_importance_scorer.analytic_ranks / rank_scores), as means over the drafts."""
    model, vae = dit.load_dit(dit_path), taesd.load_vae(vae_path)
    records = zoo_data.records(data, "heldout")
    known = zoo_data.known_styles(model.config.num_classes)  # the drawing styles the DiT's labels know
    allowed = torch.tensor([i for i, r in enumerate(records) if r["style"] in known])
    gen = torch.Generator().manual_seed(seed)
    pick = allowed[torch.randperm(len(allowed), generator=gen)[:drafts]]
    if not len(pick):
        raise ValueError(f"no held-out emoji in a drawing style the DiT knows ({', '.join(known)})")
    style = tzc.heldout_captions(clip, data)[pick]
    labels = torch.tensor([zoo_data.zoo_label(records[i]) for i in pick])
    images, attention = sample_images(G, style, len(pick), seed, attention=True)
    size = 8 * model.config.input_size  # the DiT's working size
    x = images * 2 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=size < x.shape[-1],
                          align_corners=False).clamp(-1, 1)
    targets = tis.refinement_change(model, vae, x, labels, steps, strength, cfg, gen, "attention-as-importance")
    rho_analytic = tis.analytic_ranks(x, targets)
    if scorer_path is not None:
        out = tis.rank_scores(importance.load_scorer(scorer_path), x, targets, rho_analytic)
    else:
        out = {"spearman_analytic": sum(rho_analytic) / len(rho_analytic)}
    for name, layer in (("", -1), ("_all_layers", None)):
        owned = F.adaptive_avg_pool2d(ownership(attention, layer), targets.shape[-2:])
        for kind, m in (("owned", owned), ("border", 1 - owned)):
            rho = [metrics.spearman(a, b) for a, b in zip(m, targets)]
            out[f"spearman_attention_{kind}{name}"] = sum(rho) / len(rho)
            out[f"attention_{kind}{name}_beats_analytic_on"] = sum(a > b for a, b in zip(rho, rho_analytic)) / len(rho)
    return {**out, "drafts": len(pick), "steps": steps, "strength": strength, "cfg": cfg, "seed": seed,
            "dit": str(dit_path), "vae": str(vae_path), "scorer": None if scorer_path is None else str(scorer_path),
            "draft_size": G.img_resolution, "refined_at": size}


def attention_sheet(G: gf.Generator, clip: cs.StyleCLIP, data: Path, path: Path, n: int = 8) -> None:
    """Rows of held-out drafts, each over its ownership map (last attention layer; white where one component owns
    the pixel clearly, dark on the borders)."""
    n = min(n, len(zoo_data.records(data, "heldout")))
    images, attention = sample_images(G, tzc.heldout_captions(clip, data)[:n], n, 0, attention=True)
    tzc.save_grid(torch.cat([images, ownership(attention).expand(-1, 3, -1, -1)]), path, columns=n)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def _resolutions(text: str) -> tuple[int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 2 or any(v < 4 or v & (v - 1) for v in values) or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected two powers of two 'low,high', got {text!r}")
    return values


def _comparison_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dit", type=Path, default=DEFAULT_DIT, help="the refiner whose change is the target")
    ap.add_argument("--vae", type=Path, default=DEFAULT_VAE, help="the DiT's VAE")
    ap.add_argument("--scorer", type=Path, default=DEFAULT_SCORER, help="the learned importance scorer")
    ap.add_argument("--importance-drafts", type=int, default=256, help="held-out drafts compared (0: none)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tzs.gan_arguments(ap)
    ap.set_defaults(lr=0.002)  # the reference's GANformer rate
    ap.add_argument("--size", type=int, default=tzs.DRAFT_SIZE, help="image size (a power of two)")
    ap.add_argument("--components", type=int, default=4, help="local latent components (k - 1)")
    ap.add_argument("--z-dim", type=int, default=64, help="z and w per component")
    ap.add_argument("--attention", type=_resolutions, default=(16, 32), help="lowest,highest attention resolution")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--mapping-layers", type=int, default=4)
    _comparison_arguments(ap)
    args = ap.parse_args(argv)
    if args.out.suffix != ".pkl":
        ap.error("--out must end in .pkl (a GANformer snapshot, as the GANformer Loader reads them)")

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     grad_clip=None, threads=args.threads)
    x_train, _ = zoo_data.load(args.data, "train", args.size)
    clip = cs.load_clip(args.clip)
    text, image = train_zoo_dit.style_vectors(clip, args.clip, args.data, "train")
    config = generator_config(text.shape[-1], x_train.shape[-1], args.components, args.z_dim, args.channel_base,
                              args.channel_max, args.attention, args.mapping_layers, args.heads)
    G = gf.Generator(config).train()
    D = tzs.Discriminator(config.img_resolution, config.c_dim, args.channel_base, args.channel_max).train()
    loop.log.update(config=config.__dict__, style_clip=clip.identity, train_images=len(x_train),
                    g_params=sum(p.numel() for p in G.parameters()), d_params=sum(p.numel() for p in D.parameters()))
    G, D, G_ema, opt_g, opt_d = tzs.gan_setup(loop, G, D, args)

    def evaluate_ema() -> dict:
        figures = tzs.evaluate(G_ema, clip, args.data, sample=sample_images)
        figures.pop("samples")
        loop.snapshot(lambda path: save_snapshot(path, G_ema, G, args.lr, clip.identity), figures)
        return figures

    def fake_images(c: torch.Tensor) -> torch.Tensor:
        fake, ws = generate(G, c, loop.gen, args.mixing)
        with torch.no_grad():  # as the reference's mapping tracks it: over the batch and the components
            G.mapping.w_avg.lerp_(ws[:, :, 0].mean(dim=(0, 1)), 1 - 0.995)
        return fake

    loop.evaluate = evaluate_ema
    for step in loop:
        tzs.gan_step(loop, step, D, opt_g, opt_d, fake_images, x_train, text, image, args)
    if not loop.finish():
        return
    save_snapshot(args.out, G_ema, G, args.lr, clip.identity)
    args.out.with_suffix(".json").write_text(json.dumps(loop.log, indent=1))
    finish_snapshot(args.out, clip, args)
    print(f"wrote {args.out}")


def finish_snapshot(path: Path, clip: cs.StyleCLIP, args) -> dict:
    """The figures a shipped snapshot's card cites, computed on the file itself (the end of a run, or a mid-run
    <out>.latest.pkl): held-out figures at ψ 1 (with the samples sheet) and ψ 0.7, the attention sheet and — unless
    --importance-drafts is 0 — the attention-vs-scorers comparison; written into the snapshot's training log
    (<snapshot>.json), which they complete."""
    log_path = path.with_suffix(".json")
    log = json.loads(log_path.read_text())
    G = gf.load_ganformer(path)
    final = tzs.evaluate(G, clip, args.data, sample=sample_images)
    sheet = path.with_name(path.stem + "-samples.png")
    tzc.save_grid(final.pop("samples"), sheet)
    truncated = tzs.evaluate(G, clip, args.data, psi=0.7, sample=sample_images)
    truncated.pop("samples")
    log["final"] = {**final, "samples": sheet.name}
    log["final_psi07"] = truncated
    attention = path.with_name(path.stem + "-attention.png")
    attention_sheet(G, clip, args.data, attention)
    log["attention_sheet"] = attention.name
    if args.importance_drafts > 0:
        log["importance"] = importance_comparison(G, clip, args.data, args.dit, args.vae, args.scorer,
                                                  args.importance_drafts, seed=args.seed)
    log_path.write_text(json.dumps(log, indent=1))
    print(json.dumps({"final": log["final"], "psi07": truncated, "importance": log.get("importance")}), flush=True)
    return log


def finish_main(argv=None) -> None:
    """`--finish SNAPSHOT --clip …`: finish_snapshot for a snapshot (e.g. the mid-run <out>.latest.pkl, to ship)."""
    ap = argparse.ArgumentParser(description="the shipping figures of a GANformer snapshot")
    ap.add_argument("--finish", type=Path, required=True, help="a snapshot with its training log beside it (.json)")
    ap.add_argument("--clip", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    _comparison_arguments(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    finish_snapshot(args.finish, cs.load_clip(args.clip), args)


if __name__ == "__main__":
    finish_main() if "--finish" in sys.argv[1:] else main()
