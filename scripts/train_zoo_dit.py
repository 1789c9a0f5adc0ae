"""Train the demo zoo's DiT refiner on the emoji set, in the latents of the zoo VAE.

DiT's own recipe at a small size: ε-prediction MSE under DiT's linear-β schedule (1e-4…0.02, 1000 steps), uniform
timesteps, label dropout 0.1 for classifier-free guidance, AdamW, an EMA of the weights (the EMA is what is saved).
Images are the data set's 256 px renders, so the SD1-scaled latents are 4x32x32 and the DiT sees 256 tokens at
patch 2. Class label = style x category (`zoo_data.zoo_label`): 30 classes, 0-9 twemoji, 10-19 noto, 20-29
openmoji. No learned variance (ComfyUI's samplers use ε only). The loop (resume, EMA, schedule, logging,
evaluation, `torchrun`) is devkit.train.TrainLoop.

    python scripts/train_zoo_dit.py --vae zoo/vae/diffugan-emoji-vae-256.safetensors \\
        --out zoo/dit/diffugan-emoji-dit-256.safetensors

Held-out figure, every --eval-every steps: the ε-MSE of the EMA model on held-out latents at t = 100, 300, 500,
700, 900 with fixed noise, next to the same figure for predicting ε = 0 (i.e. 1.0), and the clean-latent error
(x0-MSE) the refiner actually sees at t = 100, 300, 600. Writes the DiT (safetensors, config in the metadata; fp16),
<out>.json (settings, loss curve, evaluations) and resumes from <out>.train.pt. At every evaluation before the
last step the EMA so far is written to <out stem>.latest.safetensors (+ .json), to evaluate or ship mid-run.

Refiner emphasis (--low-noise P): with probability P a sample's timestep is drawn below --low-noise-t instead of
over all 1000 steps. Refinement runs at strength <= 0.6, so that is where the model's capacity pays; the full range
stays trained (1 - P of the samples), so strength 1.0 still works. (SDXL's refiner takes this to the extreme and is
trained on the lowest 200 timesteps only.) --init starts from a saved DiT (e.g. the shipped zoo model): every
tensor whose shape fits is taken (a model of another latent size or label count keeps its blocks; label rows are
matched by style and category, the null row to the null row); the log keeps the earlier run's settings and final
figures under "init".

Style conditioning (--style-clip CLIP): the DiT also takes a 256-d style vector from the zoo CLIP through
`style_proj` into its adaLN conditioning (zero-initialised, so a DiT from --init without it starts out unchanged).
Each sample's style is the CLIP embedding of one of its caption phrasings (train_zoo_clip.CAPTIONS) or, one time in
three, of its own image, so text prompts and reference images both steer it. The style is left out with probability
--style-dropout (then the label drops with the usual 0.1), and when it is given the label drops with probability
0.5, so a prompt alone (null label) is a trained case and guidance can run against "no style, null label". The
held-out figures then add the ε-MSE with the null label and the held-out caption's style against the null label
and no style: the gap is what the prompt tells the model about images it never saw.

The refiner's task (--degrade P): trained only on noised clean latents, a DiT refines a draft by reading its blur as
part of the image, and at refine strengths it keeps or damages the draft's content. With probability P a sample
starts instead from the latent of its image blurred to 24-64 px (degraded_latents) and the target is the ε that
leads back to the clean latent, with the blur shrinking over t as it does along an Euler refine
(restoration_batch); the rest of the samples keep the plain objective, so text -> image and the stock samplers
still work. It is still an ε-predicting DiT in the same format. The held-out figures then add the x0-MSE from a
blurred start at t 100 and 300 beside that of the blurred start itself, and whole refines of blurred held-out latents
at the workflows' strengths 0.1 and 0.3 (refine_figures: latent MSE to the clean latent, beside the blurred one's).
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
import train_zoo_clip as tzc  # noqa: E402
import zoo_data  # noqa: E402

from diffugan.models import clip_style as cs  # noqa: E402
from devkit import sampling  # noqa: E402
from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import dit, taesd  # noqa: E402

EVAL_T = (100, 300, 500, 700, 900)
X0_T = (100, 300, 600)


@torch.no_grad()
def encode_latents(vae: taesd.TinyAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Pixels [-1, 1] -> latents as the DiT sees them (VAEEncode output × 0.18215, as ComfyUI's SD1 format)."""
    return torch.cat([vae.encode(x[i:i + 32]) for i in range(0, len(x), 32)]) * taesd.SD1_SCALE


def _sha_cache(data: Path, name: str, key_file: Path, build) -> dict:
    """The tensors `build()` makes, cached in `data` as `name` with "{sha}" filled in by the first 12 hex digits
    of `key_file`'s sha256 (the model they were made with), and loaded from there."""
    import hashlib

    from safetensors.torch import load_file, save_file

    cache = data / name.format(sha=hashlib.sha256(key_file.read_bytes()).hexdigest()[:12])
    if not cache.exists():
        save_file({k: v.contiguous() for k, v in build().items()}, str(cache))
    return load_file(str(cache))


def cached_latents(vae_path: Path, data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    def build() -> dict:
        x, records = zoo_data.load(data, split)
        return {"latents": encode_latents(taesd.load_vae(vae_path), x),
                "labels": torch.tensor([zoo_data.zoo_label(r) for r in records])}

    t = _sha_cache(data, f"latents-{zoo_data.resolution(data)}-{split}-{{sha}}.safetensors", vae_path, build)
    return t["latents"], t["labels"]


def style_vectors(clip: cs.StyleCLIP, clip_path: Path, data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings by `clip` (loaded from `clip_path`) per image of a split, in zoo_data.load's order:
    (N, len(CAPTIONS), D) of its caption phrasings and (N, D) of the image itself; cached by the CLIP file's sha256."""
    def build() -> dict:
        x, records = zoo_data.load(data, split, tzc.CLIP_SIZE)
        with torch.no_grad():
            texts = [c(r) for r in records for c in tzc.CAPTIONS]
            text = tzc.text_embeddings(clip, tzc.pooled_text(clip, texts)).view(len(records), len(tzc.CAPTIONS), -1)
            return {"text": text, "image": tzc.image_embeddings(clip, (x + 1) / 2)}

    t = _sha_cache(data, f"styles-{split}-{{sha}}.safetensors", clip_path, build)
    return t["text"], t["image"]


def noised_batch(z0: torch.Tensor, alphas_bar: torch.Tensor, gen: torch.Generator, low_noise: float = 0.0,
                 low_noise_t: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch's timesteps t (uniform over the schedule; with probability `low_noise` uniform below
    `low_noise_t` instead, the refiner emphasis), its noise and x_t = sqrt(ab_t) z0 + sqrt(1 - ab_t) noise.
    The DiT, ControlNet and FiLM UNet trainers all noise their batches with it."""
    n = len(z0)
    t = torch.randint(0, len(alphas_bar), (n,), generator=gen)
    if low_noise > 0:
        low = torch.rand(n, generator=gen) < low_noise
        t = torch.where(low, torch.randint(0, low_noise_t, (n,), generator=gen), t)
    noise = torch.randn(z0.shape, generator=gen)
    ab = alphas_bar[t][:, None, None, None]
    return t, noise, ab.sqrt() * z0 + (1 - ab).sqrt() * noise


DEGRADE_PX = (24, 32, 48, 64)  # sizes an image is taken down to for the refiner's task (--degrade)


def degraded_latents(vae_path: Path, data: Path, split: str) -> torch.Tensor:
    """The latents of a split's images blurred as a low-resolution draft is: each image taken down to one size of
    DEGRADE_PX (drawn per image, fixed seed; area average) and back up (bilinear), then encoded by the VAE, in
    zoo_data.load's order; cached beside cached_latents' file. Encoded under bf16 autocast (about 2.5x faster on
    this CPU; the rounding is about 1 % of the change the blur makes to a latent). Blurring the latents instead
    does not stand in for this: measured on 48 held-out images at 48 px, it changes them 6x as much as encoding
    the blurred image does, and in another direction (cosine 0.56)."""
    import torch.nn.functional as F

    def build() -> dict:
        x, _ = zoo_data.load(data, split)
        px = torch.tensor(DEGRADE_PX)[torch.randint(0, len(DEGRADE_PX), (len(x),),
                                                    generator=torch.Generator().manual_seed(0))]
        vae = taesd.load_vae(vae_path)
        out = []
        for i in range(0, len(x), 32):
            chunk = x[i:i + 32].clone()
            for p in px[i:i + 32].unique().tolist():
                rows = px[i:i + 32] == p
                small = F.interpolate(chunk[rows], size=(p, p), mode="area")
                chunk[rows] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(vae.encode(chunk).float() * taesd.SD1_SCALE)
        return {"latents": torch.cat(out), "px": px}

    name = f"latents-{zoo_data.resolution(data)}-{split}-{{sha}}-degraded.safetensors"
    return _sha_cache(data, name, vae_path, build)["latents"]


def restoration_batch(z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_bar: torch.Tensor,
                      z_degraded: torch.Tensor, rows: torch.Tensor, full_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's own task (--degrade). For `rows`, x_t starts from the degraded latent and the target is the ε
    that leads back to the clean z0: with sigma(t) = sqrt((1 - ab) / ab) and d = z_deg - z0,
    x_t = sqrt(ab) (z0 + lam d) + sqrt(1 - ab) noise, lam = min(1, sigma(t) / sigma(full_t)), target
    (x_t - sqrt(ab) z0) / sqrt(1 - ab) = noise + d / max(sigma(t), sigma(full_t)). So the x0 a sampler reads off
    the prediction is the clean latent, and lam is the share of d an Euler refine started at or above full_t still
    carries at t when each step's x0 is right (it shrinks as sigma does): training sees the states the refine
    passes through, and the extra target term stays bounded by d / sigma(full_t). Other rows: the plain x_t and
    noise. Returns (x_t, target)."""
    ab = alphas_bar[t][:, None, None, None]
    sigma = ((1 - ab) / ab).sqrt()
    sigma_full = float(((1 - alphas_bar[full_t]) / alphas_bar[full_t]).sqrt())
    d = (z_degraded - z0) * rows[:, None, None, None]
    xt = ab.sqrt() * (z0 + (sigma / sigma_full).clamp(max=1.0) * d) + (1 - ab).sqrt() * noise
    return xt, noise + d / sigma.clamp(min=sigma_full)


def restoration_figures(z: torch.Tensor, z_degraded: torch.Tensor, alphas_bar: torch.Tensor, predict, full_t: int,
                        ts: tuple[int, ...] = (100, 300)) -> dict:
    """Held-out figures of the refiner's task: the x0 read off the prediction from a degraded start (fixed noise,
    seed 4321) against the clean latent, as MSE, beside the degraded start's own MSE (what doing nothing gives)."""
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(4321))
    out = {}
    for t in ts:
        tt = torch.full((len(z),), t, dtype=torch.long)
        xt, _ = restoration_batch(z, tt, noise, alphas_bar, z_degraded, torch.ones(len(z)), full_t)
        ab = alphas_bar[t]
        x0 = (xt - (1 - ab).sqrt() * predict(xt, t)) / ab.sqrt()
        start = (xt - (1 - ab).sqrt() * noise) / ab.sqrt()  # the degraded latent x_t was noised from
        out[f"restore_x0_mse_t{t}"] = float((x0 - z).square().mean())
        out[f"restore_start_mse_t{t}"] = float((start - z).square().mean())
    return out


REFINE_STRENGTHS = (0.1, 0.3)  # refine_any_image's and the coarse-to-fine workflows' Refine strengths
REFINE_IMAGES = 32  # held-out latents refine_figures refines at each evaluation


def refine_figures(model: dit.DiT, z: torch.Tensor, z_degraded: torch.Tensor, style: torch.Tensor | None,
                   steps: int = 20, cfg: float = 3.0) -> dict:
    """The refiner's task end to end: each degraded latent refined as the workflows' Refine does (dense Euler
    img2img over `steps` from each of REFINE_STRENGTHS, null label, the caption's style with guidance `cfg`; fixed
    noise, seed 7), as latent MSE to the clean latent (refine_mse_s<strength>), beside the degraded latent's own
    (refine_start_mse: what doing nothing gives). Below refine_start_mse, refining restores."""
    d = next(model.parameters()).device
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(7)).to(d)
    null = torch.full((len(z),), model.config.null_class, dtype=torch.long, device=d)
    out = {"refine_start_mse": float((z_degraded - z).square().mean())}
    for s in REFINE_STRENGTHS:
        sigmas, ts = sampling.img2img_schedule(steps, s)
        refined = sampling.euler_img2img(model, z_degraded.to(d), null, sigmas, ts, cfg, noise,
                                         style=None if style is None else style.to(d))[0]
        out[f"refine_mse_s{s}"] = float((refined.float().cpu() - z).square().mean())
    return out


def draw_styles(idx: torch.Tensor, styles: tuple[torch.Tensor, torch.Tensor], style_dropout: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The styles of a training batch (rows `idx` of the split) from style_vectors' (text, image): each row one of
    its caption phrasings' embeddings or (one in three) its image's, and no style (a zero row, DiT.conditioning)
    with probability `style_dropout`. Returns the styles and which rows have one."""
    text, image = styles
    k = text.shape[1]  # draws 0..k-1: that caption phrasing; k..k+k/2-1: the image (one in three)
    which = torch.randint(0, k + k // 2, (len(idx),), generator=gen)
    style = torch.where((which < k)[:, None], text[idx, which.clamp(max=k - 1)], image[idx])
    has = torch.rand(len(idx), generator=gen) >= style_dropout
    return style * has[:, None], has


def draw_conditioning(y: torch.Tensor, idx: torch.Tensor, styles: tuple[torch.Tensor, torch.Tensor] | None,
                      config: dit.DiTConfig, style_dropout: float, gen: torch.Generator):
    """The labels and styles of a training batch (rows `idx` of the split): without `styles` the label drops
    with config.class_dropout_prob (style None); with `styles` the rows' styles as draw_styles draws them, and a
    row's label drops half the time when it has a style."""
    n = len(y)
    if styles is None:
        drop = torch.rand(n, generator=gen) < config.class_dropout_prob
        return torch.where(drop, torch.full_like(y, config.null_class), y), None
    style, has = draw_styles(idx, styles, style_dropout, gen)
    drop = torch.rand(n, generator=gen) < torch.where(has, 0.5, config.class_dropout_prob)
    return torch.where(drop, torch.full_like(y, config.null_class), y), style


def _predict(model: dit.DiT, xt, t, y, style=None) -> torch.Tensor:
    d = next(model.parameters()).device
    return torch.cat([model(xt[i:i + 128].to(d), t[i:i + 128].to(d), y[i:i + 128].to(d),
                            None if style is None else style[i:i + 128].to(d)).float().cpu()
                      for i in range(0, len(xt), 128)])


def noise_figures(z: torch.Tensor, alphas_bar: torch.Tensor, predict, variants: dict | None = None) -> dict:
    """Held-out figures of a noise predictor on clean latents z: ε-MSE at each of EVAL_T and its mean, and the
    x0-MSE at X0_T (what a refiner sees: the clean-latent estimate x0 = (x_t - sqrt(1 - ab) ε) / sqrt(ab)), for
    `predict(x_t, t)`; each of `variants` ({suffix: predict}, other conditionings) adds its ε-MSE as
    eps_mse_t{t}{suffix} and eps_mse_mean{suffix}. The same noise (seed 1234) for every model."""
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1234))
    variants = variants or {}
    out = {}
    for t in sorted(set(EVAL_T) | set(X0_T)):
        ab = alphas_bar[t]
        xt = ab.sqrt() * z + (1 - ab).sqrt() * noise
        pred = predict(xt, t)
        if t in EVAL_T:
            out[f"eps_mse_t{t}"] = float((pred - noise).square().mean())
            for suffix, other in variants.items():
                out[f"eps_mse_t{t}{suffix}"] = float((other(xt, t) - noise).square().mean())
        if t in X0_T:
            out[f"x0_mse_t{t}"] = float(((xt - (1 - ab).sqrt() * pred) / ab.sqrt() - z).square().mean())
    for suffix in ("", *variants):
        out[f"eps_mse_mean{suffix}"] = sum(out[f"eps_mse_t{t}{suffix}"] for t in EVAL_T) / len(EVAL_T)
    return out


@torch.no_grad()
def evaluate(model: dit.DiT, z: torch.Tensor, y: torch.Tensor, alphas_bar: torch.Tensor,
             style: torch.Tensor | None = None, degraded: tuple[torch.Tensor, int] | None = None) -> dict:
    """noise_figures with the label given and no style; with `style` (the held-out captions' embeddings) also the
    ε-MSE with the null label with (_prompt) and without (_none) that style; with `degraded` (a --degrade run: the
    held-out degraded latents and --degrade-t) also restoration_figures, with the prompt as a refine gives it
    (null label and the style, if any), and refine_figures on REFINE_IMAGES of them."""
    null = torch.full_like(y, model.config.null_class)
    tt = lambda t: torch.full((len(z),), t, dtype=torch.long)  # noqa: E731
    variants = None if style is None else {"_prompt": lambda xt, t: _predict(model, xt, tt(t), null, style),
                                           "_none": lambda xt, t: _predict(model, xt, tt(t), null)}
    out = noise_figures(z, alphas_bar, lambda xt, t: _predict(model, xt, tt(t), y), variants)
    if degraded is not None:
        out.update(restoration_figures(z, degraded[0], alphas_bar,
                                       lambda xt, t: _predict(model, xt, tt(t), null, style), degraded[1]))
        rows = slice(None, None, max(1, len(z) // REFINE_IMAGES))  # per image: 2 x 20 steps, x2 for guidance
        out.update(refine_figures(model, z[rows], degraded[0][rows], None if style is None else style[rows]))
    return out


@torch.no_grad()
def text_to_image(model: dit.DiT, vae: taesd.TinyAutoencoder, style: torch.Tensor | None, noise: torch.Tensor,
                  steps: int, cfg: float, chunk: int = 64) -> torch.Tensor:
    """Images in [-1, 1] from pure noise (N, C, h, w) with the null label: Euler over `steps`, the style (N, D) on
    the cond rows with guidance `cfg`, or with style None unconditional (no guidance); decoded by `vae`."""
    sigmas, ts = sampling.img2img_schedule(steps, 1.0)
    null = torch.full((len(noise),), model.config.null_class, dtype=torch.long)
    out = []
    for i in range(0, len(noise), chunk):
        z, _ = sampling.euler_img2img(model, torch.zeros_like(noise[i:i + chunk]), null[i:i + chunk], sigmas, ts,
                                 cfg if style is not None else 1.0, noise[i:i + chunk],
                                 style=None if style is None else style[i:i + chunk])
        out.append(vae.decode(z / taesd.SD1_SCALE).clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def text_to_image_metrics(model: dit.DiT, vae_path: Path, clip: cs.StyleCLIP, data: Path, steps: int = 25,
                          cfg: float = 3.0, seed: int = 0) -> dict:
    """Text -> image on the held-out captions (at the DiT's size, from pure noise, Euler, `steps`, guidance `cfg`
    against "null label, no style"; unconditional without guidance), judged by the zoo CLIP
    (train_zoo_clip.judge_text_to_image)."""

    vae = taesd.load_vae(vae_path)
    n, latent = len(zoo_data.records(data, "heldout")), model.config.input_size
    shape = (n, model.config.in_channels, latent, latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    out = tzc.judge_text_to_image(clip, data,
                                  lambda style: text_to_image(model, vae, style, noise, steps, cfg) * 0.5 + 0.5)
    return {"steps": steps, "cfg": cfg, **out}


def init_from(model: dit.DiT, path: Path) -> dict:
    """Take every tensor of the DiT at `path` whose shape fits `model` (label rows matched by style x category:
    a model with fewer styles gives its rows to the first styles, its null row to the null row). Returns what was
    taken, reshaped or left at its initialisation."""
    old = dit.load_dit(path)
    theirs = {k: v.float() for k, v in old.state_dict().items()}
    mine = model.state_dict()
    taken, fresh = [], []
    for k, v in mine.items():
        if k == "pos_embed":  # fixed sin-cos table of the model's own grid
            continue
        if (k == "y_embedder.embedding_table.weight" and k in theirs and theirs[k].shape != v.shape
                and theirs[k].shape[1] == v.shape[1]):
            rows = theirs[k]
            n = min(old.config.num_classes, model.config.num_classes)
            v[:n] = rows[:n]
            if old.config.class_dropout_prob > 0 and model.config.class_dropout_prob > 0:
                v[model.config.null_class] = rows[old.config.null_class]
            taken.append(f"{k} (rows 0..{n - 1} and null)")
        elif k in theirs and theirs[k].shape == v.shape:
            v.copy_(theirs[k])
            taken.append(k)
        else:
            fresh.append(k)
    blocks = [k for k in fresh if k.startswith("blocks.")]
    if blocks:
        raise SystemExit(f"--init {path}: its transformer blocks do not fit ({blocks[0]} and {len(blocks) - 1} more): "
                         f"it has {old.config}, this run {model.config}")
    model.load_state_dict(mine)
    return {"taken": len(taken), "fresh": fresh, "config": old.config.__dict__}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32, help="per process")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-images", type=int, default=256, help="held-out latents in the periodic evaluation "
                    "(all of them at the end)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (about 2x faster a step on "
                    "CPUs with AMX or AVX512-BF16; GPUs always use it)")
    ap.add_argument("--low-noise", type=float, default=0.0, help="share of samples with t < --low-noise-t")
    ap.add_argument("--low-noise-t", type=int, default=650)
    ap.add_argument("--init", type=Path, default=None, help="start from this saved DiT (tensors whose shape fits)")
    ap.add_argument("--style-clip", type=Path, default=None, help="train style conditioning on this zoo CLIP")
    ap.add_argument("--style-dropout", type=float, default=0.2)
    ap.add_argument("--style-lr-mult", type=float, default=1.0,
                    help="learning rate of `style_proj` as a multiple of --lr: its input is a unit CLIP vector (each "
                         "of D dims about 1/sqrt(D)), so at x1 the style term grows ~sqrt(D) times slower than the "
                         "timestep's; 16 (sqrt of 256) is the input rescaled to unit variance, without changing the "
                         "file format")
    ap.add_argument("--degrade", type=float, default=0.0, help="share of samples trained on the refiner's task: "
                    "x_t from a blurred latent, the target leading back to the clean one (restoration_batch)")
    ap.add_argument("--degrade-t", type=int, default=300, help="timestep from which the degradation is fully in "
                    "x_t (below it, the share sigma(t) / sigma(degrade_t) an Euler refine leaves)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     threads=args.threads, cpu_bf16=args.bf16)
    z_train, y_train = cached_latents(args.vae, args.data, "train")
    z_held, y_held = cached_latents(args.vae, args.data, "heldout")
    if args.degrade:
        z_train_deg = degraded_latents(args.vae, args.data, "train")
        z_held_deg = degraded_latents(args.vae, args.data, "heldout")
    clip = style_clip = None
    if args.style_clip is not None:
        clip = cs.load_clip(args.style_clip)
        style_clip = clip.identity
        text_train, image_train = style_vectors(clip, args.style_clip, args.data, "train")
        held_style = style_vectors(clip, args.style_clip, args.data, "heldout")[0][:, 0]  # the data set's caption
    config = dit.DiTConfig(depth=args.depth, hidden_size=args.hidden, num_heads=args.heads, patch_size=args.patch,
                           num_classes=zoo_data.NUM_LABELS, learn_sigma=False, class_dropout_prob=0.1,
                           input_size=z_train.shape[-1], style_dim=0 if style_clip is None else text_train.shape[-1])
    raw = dit.DiT(config).train()
    raw.style_clip = style_clip or ""
    loop.log.update(config=config.__dict__, latent_std=float(z_train.std()), latent_mean=float(z_train.mean()),
                    style_clip=style_clip, tokens=(z_train.shape[-1] // args.patch) ** 2, init=None)
    if args.init is not None:
        loop.log["init"] = {"path": str(args.init), **init_from(raw, args.init)}
        prev_log = args.init.with_suffix(".json")
        if prev_log.exists():
            p = json.loads(prev_log.read_text())
            loop.log["init"].update(settings=p["settings"], final=p.get("final"), previous=p.get("init"))
    model = loop.module(raw)
    ema = loop.ema(model, args.ema)
    style_params = list(raw.style_proj.parameters()) if config.style_dim else []
    rest = [p for p in raw.parameters() if all(p is not q for q in style_params)]
    groups = [{"params": rest}]
    if style_params:
        groups.append({"params": style_params, "lr": args.lr * args.style_lr_mult})
    opt = loop.optimizer(torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0))
    alphas_bar = torch.cumprod(1 - dit.linear_betas(), 0).float()
    sub = slice(None, None, max(1, len(z_held) // args.eval_images))
    held = (z_held, y_held, alphas_bar) + ((held_style,) if style_clip else ())
    periodic = tuple(h[sub] if h is not alphas_bar else h for h in held)

    def evaluate_and_snapshot() -> dict:
        last = loop.step == args.steps
        figures = evaluate(ema, *(held if last else periodic),
                           degraded=None if not args.degrade else (z_held_deg if last else z_held_deg[sub],
                                                                   args.degrade_t))
        loop.snapshot(lambda path: dit.save_dit_safetensors(copy.deepcopy(ema).cpu(), path, half=True), figures)
        return figures
    loop.evaluate = evaluate_and_snapshot
    gen, dev = loop.gen, loop.device
    for step in loop:
        idx = torch.randint(0, len(z_train), (args.batch,), generator=gen)
        z0, y = z_train[idx], y_train[idx]
        t, noise, xt = noised_batch(z0, alphas_bar, gen, args.low_noise, args.low_noise_t)
        target = noise
        if args.degrade:
            rows = (torch.rand(len(z0), generator=gen) < args.degrade).float()
            xt, target = restoration_batch(z0, t, noise, alphas_bar, z_train_deg[idx], rows, args.degrade_t)
        styles = None if style_clip is None else (text_train, image_train)
        y, style = draw_conditioning(y, idx, styles, config, args.style_dropout, gen)
        with loop.autocast():
            pred = model(xt.to(dev), t.to(dev), y.to(dev), None if style is None else style.to(dev))
        loss = (pred.float() - target.to(dev)).square().mean()
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    log = loop.log
    ema = ema.cpu()
    dit.save_dit_safetensors(ema, args.out, half=True)
    if style_clip is not None:
        t2i = text_to_image_metrics(ema, args.vae, clip, args.data)
        sheet = args.out.with_name(args.out.stem + "-samples.png")
        tzc.save_grid(t2i.pop("samples"), sheet)
        log["text_to_image"] = {**t2i, "samples": sheet.name}
        print(json.dumps(log["text_to_image"]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}: held-out eps-MSE {log['final']['eps_mse_mean']:.4f}")


if __name__ == "__main__":
    main()
