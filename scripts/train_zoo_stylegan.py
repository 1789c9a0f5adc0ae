"""Train the demo zoo's StyleGAN2: a 64 px generator of emoji steered by the zoo CLIP's text embeddings.

A conditional StyleGAN2 in NVlabs' layout (stylegan2-ada-pytorch's `Generator` with `c_dim` = the CLIP's embedding
size): the label c is a unit CLIP embedding, which the mapping network's `embed` layer takes as it would a one-hot
class. So the generator loads and runs like any conditional StyleGAN2, and a Style Encode output (a prompt) is
its label. The file records the CLIP's identity; the nodes refuse styles from another CLIP.

- Labels per sample (as the zoo DiT): the CLIP text embedding of one of the image's caption phrasings
  (train_zoo_clip.CAPTIONS) or, one time in three, the CLIP embedding of the image itself; with probability
  --label-dropout none (c = 0), which is the generator's unprompted mode.
- Discriminator (training only, not shipped): StyleGAN2's residual discriminator with minibatch standard deviation
  and the projection conditioning of StyleGAN2-ADA (a small mapping network of c, dot product with the features).
- Losses as StyleGAN2-ADA: non-saturating logistic; lazy R1 on real images every 16 steps; style mixing with
  probability --mixing; no path-length regulariser. DiffAugment (colour, translation, cutout) on every image the
  discriminator sees, real and generated, because 3,400 images are few for a GAN. G's weights are averaged (EMA,
  half-life 10 k images with StyleGAN2-ADA's ramp-up); the w_avg used for truncation is tracked as NVlabs does.
- Held-out figures every --eval-every steps, judged by the zoo CLIP (train_zoo_clip.judge_text_to_image): the CLIP
  score of images from the 380 held-out captions and the Fréchet distance of their CLIP features to the held-out
  images, against the unprompted generator (c = 0). At the end also with truncation 0.7 toward each prompt's mean w.
  No loss uses the CLIP's image tower, so these figures are not trained for directly (the labels are embeddings only).

    python scripts/train_zoo_stylegan.py --clip zoo/clip_style/diffugan-emoji-clip.safetensors \\
        --out zoo/stylegan/diffugan-emoji-stylegan.safetensors

Writes the EMA generator (safetensors), <out>.json (settings, loss curve, evaluations), <out>-samples.png (held-out
captions); resumes from <out>.train.pt.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import train_zoo_clip as tzc  # noqa: E402
import train_zoo_dit  # noqa: E402
import zoo_data  # noqa: E402

from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import stylegan as sg  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models.stylegan import Conv2dLayer, FullyConnectedLayer  # noqa: E402

DRAFT_SIZE = 64  # the zoo StyleGAN draws 64 px drafts (trained on antialiased downscales of the 256 px renders)


def generator_config(c_dim: int, channel_base: int, channel_max: int, resolution: int = DRAFT_SIZE
                     ) -> sg.StyleGANConfig:
    return sg.StyleGANConfig("stylegan2", z_dim=128, c_dim=c_dim, w_dim=256, img_resolution=resolution,
                             img_channels=3, mapping_kwargs={"num_layers": 4},
                             synthesis_kwargs={"channel_base": channel_base, "channel_max": channel_max,
                                               "num_fp16_res": 0, "conv_clamp": None, "architecture": "skip"})


# --------------------------------------------------------------------------------------------------------------
# Discriminator (training only)
# --------------------------------------------------------------------------------------------------------------
class DiscriminatorBlock(nn.Module):
    """A 3x3 conv, 2x down-sampling, a 3x3 conv, plus a 1x1 residual path (StyleGAN2's 'resnet' discriminator, with
    a 2x2 box filter instead of NVlabs' [1,3,3,1] FIR; the second conv runs at the lower resolution as theirs)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, activation="lrelu")
        self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2), gain=math.sqrt(0.5))
        x = self.conv1(F.avg_pool2d(self.conv0(x), 2), gain=math.sqrt(0.5))
        return y + x


class Discriminator(nn.Module):
    def __init__(self, resolution: int, c_dim: int, channel_base: int, channel_max: int, cmap_dim: int = 128,
                 mbstd_group: int = 4):
        super().__init__()
        ch = lambda r: min(channel_base // r, channel_max)  # noqa: E731
        self.fromrgb = Conv2dLayer(3, ch(resolution), 1, activation="lrelu")
        blocks, r = [], resolution
        while r > 4:
            blocks.append(DiscriminatorBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(ch(4) + 1, ch(4), 3, activation="lrelu")
        self.fc = FullyConnectedLayer(ch(4) * 16, ch(4), activation="lrelu")
        self.out = FullyConnectedLayer(ch(4), cmap_dim)
        self.cmap = nn.Sequential(FullyConnectedLayer(c_dim, cmap_dim, activation="lrelu"),
                                  FullyConnectedLayer(cmap_dim, cmap_dim))
        self.cmap_dim = cmap_dim

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[1, 2, 3])  # (N/g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(img))
        x = self.conv(self.minibatch_std(x))
        x = self.out(self.fc(x.flatten(1)))
        return (x * self.cmap(c)).sum(1) / math.sqrt(self.cmap_dim)  # (N,) logits


# --------------------------------------------------------------------------------------------------------------
# DiffAugment: colour, translation, cutout (differentiable, per sample)
# --------------------------------------------------------------------------------------------------------------
def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape  # random draws on the CPU from `gen` (the same on every device), applied on x's device
    r = lambda *s: torch.rand(*s, generator=gen).to(x.device)  # noqa: E731
    x = x + (r(n, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r(n, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (r(n, 1, 1, 1) + 0.5) + mean  # contrast
    shift = (torch.randint(-(h // 8), h // 8 + 1, (n, 2), generator=gen).float() * 2 / h).to(x.device)  # 1/8
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=x.device).repeat(n, 1, 1)  # translation
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
    cy, cx = (r(n) * h).long(), (r(n) * w).long()  # cutout, half the size
    yy, xx = torch.arange(h, device=x.device)[None, :, None], torch.arange(w, device=x.device)[None, None, :]
    keep = ((yy - cy[:, None, None]).abs() >= h // 4) | ((xx - cx[:, None, None]).abs() >= w // 4)
    return x * keep[:, None].to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def draw_labels(text: torch.Tensor, image: torch.Tensor, idx: torch.Tensor, dropout: float,
                gen: torch.Generator) -> torch.Tensor:
    """Per sample: a caption phrasing's embedding, one time in three the image's own, with `dropout` none (zeros)."""
    k = text.shape[1]
    which = torch.randint(0, k + k // 2, (len(idx),), generator=gen)
    c = torch.where((which < k)[:, None], text[idx, which.clamp(max=k - 1)], image[idx])
    return c * (torch.rand(len(idx), generator=gen) >= dropout)[:, None].float()


def mix_layers(ws: torch.Tensor, second, gen: torch.Generator, mixing: float, dim: int = 1) -> torch.Tensor:
    """Style mixing regularisation: per sample, with probability `mixing`, the layers of `ws` along `dim` from a
    random one on are those of `second()` (the ws of a second z, same label; called after the draws)."""
    n, layers = ws.shape[0], ws.shape[dim]
    cut = torch.randint(1, layers, (n,), generator=gen)
    cut = torch.where(torch.rand(n, generator=gen) < mixing, cut, torch.full_like(cut, layers))
    ws2 = second()
    rows = torch.arange(layers, device=ws.device).view([layers if d == dim else 1 for d in range(ws.ndim)])
    return torch.where(rows < cut.to(ws.device).view([n] + [1] * (ws.ndim - 1)), ws, ws2)


def generate(G: sg.Generator, c: torch.Tensor, gen: torch.Generator, mixing: float) -> torch.Tensor:
    z = torch.randn(len(c), G.z_dim, generator=gen).to(c.device)
    ws = G.mapping(z, c)
    if mixing > 0:  # style mixing regularisation: from a random layer on, the W of a second z (same label)
        ws = mix_layers(ws, lambda: G.mapping(torch.randn(len(c), G.z_dim, generator=gen).to(c.device), c), gen,
                        mixing)
    return G.synthesis(ws, noise_mode="random", generator=gen), ws


@torch.no_grad()
def sample_images(G: sg.Generator, style: torch.Tensor | None, n: int, seed: int, psi: float = 1.0) -> torch.Tensor:
    """n images in 0..1 for labels `style` (n, D) (None: c = 0, the unprompted mode), fixed z from `seed`."""
    dev = next(G.parameters()).device
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    c = (torch.zeros(n, G.c_dim) if style is None else style).to(dev)
    out = [G.synthesis(sg.mapping_truncated(G, z[i:i + 64], c[i:i + 64], psi), noise_mode="const").float().cpu()
           for i in range(0, n, 64)]
    return (torch.cat(out) * 0.5 + 0.5).clamp(0, 1)


def evaluate(G: nn.Module, clip: cs.StyleCLIP, data: Path, psi: float = 1.0, seed: int = 0, sample=None) -> dict:
    """The held-out text -> image figures; `sample` (default sample_images) as sample_images for other generators."""
    n, sample = len(zoo_data.records(data, "heldout")), sample or sample_images
    return {"psi": psi, **tzc.judge_text_to_image(clip, data, lambda style: sample(G, style, n, seed, psi))}


def gan_arguments(ap: argparse.ArgumentParser) -> None:
    """The command-line settings of the GAN training shared with train_zoo_ganformer.py."""
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--clip", type=Path, required=True, help="the zoo CLIP whose embeddings are the labels")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.0025)
    ap.add_argument("--channel-base", type=int, default=2048)
    ap.add_argument("--channel-max", type=int, default=128)
    ap.add_argument("--r1-gamma", type=float, default=0.05)
    ap.add_argument("--r1-every", type=int, default=16)
    ap.add_argument("--mixing", type=float, default=0.5)
    ap.add_argument("--label-dropout", type=float, default=0.1)
    ap.add_argument("--ema-kimg", type=float, default=10.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")


def gan_setup(loop: TrainLoop, G: nn.Module, D: nn.Module, args) -> tuple:
    """G and D registered with the loop, G's EMA and the two Adam optimizers -> (G, D, G_ema, opt_g, opt_d)."""
    # two optimizers, a gradient penalty through autograd.grad and D frozen in G's step: gradients are averaged
    # over processes by the loop (ddp=False) rather than by DistributedDataParallel
    G, D = loop.module(G, "G", ddp=False), loop.module(D, "D", ddp=False)

    def ema_decay(steps: int) -> float:  # StyleGAN2-ADA: half-life ema_kimg, ramped up over the first 5 % of images
        images = args.batch * loop.world
        return 0.5 ** (images / max(min(args.ema_kimg * 1000, steps * images * 0.05), 1e-8))

    G_ema = loop.ema(G, ema_decay)
    r1_ratio = args.r1_every / (args.r1_every + 1)  # lazy regularisation (StyleGAN2): adjust D's lr and betas
    opt_g = loop.optimizer(torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8), schedule=False)
    opt_d = loop.optimizer(torch.optim.Adam(D.parameters(), lr=args.lr * r1_ratio, betas=(0.0, 0.99 ** r1_ratio),
                                            eps=1e-8), schedule=False)
    return G, D, G_ema, opt_g, opt_d


def gan_step(loop: TrainLoop, step: int, D: nn.Module, opt_g, opt_d, fake_images, x_train: torch.Tensor,
             text: torch.Tensor, image: torch.Tensor, args) -> None:
    """One training step of both networks. `fake_images(c)` generates a batch for labels c on the graph (and
    updates the generator's tracked w_avg)."""
    gen, dev = loop.gen, loop.device
    # one generated batch (labels drawn apart from the real batch's) serves both updates: D sees it detached
    idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
    c_real = draw_labels(text, image, idx, args.label_dropout, gen).to(dev)
    c_fake = draw_labels(text, image, torch.randint(0, len(x_train), (args.batch,), generator=gen),
                         args.label_dropout, gen).to(dev)
    fake = fake_images(c_fake)
    # discriminator: real images with their labels against the generated ones
    real = x_train[idx].to(dev)
    regularise = step % args.r1_every == 0
    real.requires_grad_(regularise)
    real_logits = D(diff_augment(real, gen), c_real)
    fake_logits = D(diff_augment(fake.detach(), gen), c_fake)
    loss_d = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if regularise:
        grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean()
        loss_d = loss_d + r1 * (args.r1_gamma / 2) * args.r1_every
        loop.record(r1=r1)
    loop.backward(loss_d, opt_d)
    # generator: non-saturating loss through the updated (augmented) discriminator
    D.requires_grad_(False)
    loss_g = F.softplus(-D(diff_augment(fake, gen), c_fake)).mean()
    loop.backward(loss_g, opt_g)
    D.requires_grad_(True)
    loop.record(g=loss_g, d=loss_d, real=real_logits.detach().mean(), fake=fake_logits.detach().mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gan_arguments(ap)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     grad_clip=None, threads=args.threads)
    x_train, _ = zoo_data.load(args.data, "train", DRAFT_SIZE)
    clip = cs.load_clip(args.clip)
    text, image = train_zoo_dit.style_vectors(clip, args.clip, args.data, "train")
    config = generator_config(text.shape[-1], args.channel_base, args.channel_max, x_train.shape[-1])
    G = sg.Generator(config).train()
    G.style_clip = clip.identity
    D = Discriminator(config.img_resolution, config.c_dim, args.channel_base, args.channel_max).train()
    loop.log.update(config=config.__dict__, style_clip=clip.identity, train_images=len(x_train),
                    g_params=sum(p.numel() for p in G.parameters()), d_params=sum(p.numel() for p in D.parameters()))
    G, D, G_ema, opt_g, opt_d = gan_setup(loop, G, D, args)

    def evaluate_ema() -> dict:
        result = evaluate(G_ema, clip, args.data)
        result.pop("samples")
        return result

    def fake_images(c: torch.Tensor) -> torch.Tensor:
        fake, ws = generate(G, c, loop.gen, args.mixing)
        with torch.no_grad():
            G.mapping.w_avg.lerp_(ws[:, 0].mean(0), 1 - 0.995)  # as NVlabs' mapping tracks it during training
        return fake

    loop.evaluate = evaluate_ema
    for step in loop:
        gan_step(loop, step, D, opt_g, opt_d, fake_images, x_train, text, image, args)
    if not loop.finish():
        return
    log, G_ema = loop.log, G_ema.cpu()
    G_ema.style_clip = clip.identity
    sg.save_stylegan_safetensors(G_ema, args.out)
    G_saved = sg.load_stylegan(args.out)  # the figures are those of the shipped file
    final = evaluate(G_saved, clip, args.data)
    sheet = args.out.with_name(args.out.stem + "-samples.png")
    tzc.save_grid(final.pop("samples"), sheet)
    truncated = evaluate(G_saved, clip, args.data, psi=0.7)
    truncated.pop("samples")
    log["final"] = {**final, "samples": sheet.name}
    log["final_psi07"] = truncated
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(json.dumps({"final": log["final"], "psi07": truncated}), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
