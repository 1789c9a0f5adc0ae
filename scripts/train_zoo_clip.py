"""Train the demo zoo's CLIP on the emoji set: a locked pretrained text tower, a small ViT image tower.

LiT-style ("locked-image tuning", here with the text side locked): the text tower is the pretrained sentence
encoder all-MiniLM-L6-v2 (models/clip_style.py, LOCKED_TEXT_TOWERS), frozen, so prompts the emoji captions never
used still land in a sensible place; its mean-pooled output passes through a trained linear projection. The image
tower (open_clip ViT, 64 px, patch 8, 4 layers, width 256) is trained from scratch with the symmetric contrastive
(InfoNCE) loss and a learned temperature, as in CLIP.

- Captions: each image gets one of several phrasings of its name, category and style, drawn per step
  (CAPTIONS), so "grinning face", "a noto emoji of a grinning face" and the data set's own caption all work.
  Texts that are equal (e.g. "grinning face" for both drawings of that emoji) count as positives for each other
  instead of as false negatives.
- Augmentation: random scale and shift (an affine crop), and with probability 0.5 a down-and-up resample to 16..48 px,
  so blurry coarse drafts embed near their sharp originals. No flips or colour changes (they change the meaning).
- Held-out figures (the 10 % of emoji no zoo model trains on), every --eval-every steps: image -> caption retrieval
  among the 380 held-out captions and image -> name retrieval among the 190 held-out names (top-1 / top-5; chance
  is 0.3 % / 1.3 % and 0.5 % / 2.6 %), zero-shot style and category accuracy, and the mean cosine of matching
  against non-matching image/caption pairs. The same retrieval on 380 training images shows over-fitting.

    python scripts/train_zoo_clip.py --out zoo/clip_style/diffugan-emoji-clip.safetensors

Writes the CLIP without the locked tower's weights (the loader reads those from the tower's sha256-checked copy),
fp16; <out>.json (settings, loss curve, evaluations); resumes from <out>.train.pt.
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

from devkit.train import TrainLoop  # noqa: E402
from diffugan.models import clip_style as cs  # noqa: E402

ARCH = "DiffuGAN-CLIP-Emoji"
CLIP_SIZE = 64  # the zoo CLIP's image tower sees 64 px emoji (antialiased downscales of the renders)
CAPTIONS = (  # phrasings per image; the first is the data set's caption, used for held-out caption retrieval
    lambda r: r["caption"],
    lambda r: r["name"],
    lambda r: f"{r['name']} emoji",
    lambda r: f"a {r['style']} emoji of {r['name']}",
    lambda r: f"{r['name']}, {r['category'].lower()}",
    lambda r: f"{r['name']} in {r['style']} style",
)
STYLE_PROMPTS = {s: f"an emoji in {s} style" for s in zoo_data.STYLES}
CATEGORY_PROMPTS = {c: f"an emoji from the category {c.lower()}" for c in zoo_data.CATEGORIES}


@torch.no_grad()
def pooled_text(clip: cs.StyleCLIP, texts: list[str], batch: int = 256) -> torch.Tensor:
    """The locked tower's mean-pooled features (before the trained projection) for each text."""
    text = clip.clip.text
    out = []
    for i in range(0, len(texts), batch):
        tokens = clip.tokenizer(texts[i:i + batch])
        mask = (tokens != text.config.pad_token_id).long()
        used = int(mask.sum(1).max())  # drop the all-padding columns: same result, less work
        tokens, mask = tokens[:, :used], mask[:, :used]
        out.append(text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask))
    return torch.cat(out)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x: (N, 3, 64, 64) in 0..1 -> randomly scaled (0.8..1.15) and shifted (±8 %) crops, half of them blurred by a
    resample through 16..48 px. White fills what the crop exposes (the emoji background)."""
    n = len(x)
    scale = torch.empty(n).uniform_(0.8, 1.15, generator=gen)
    shift = torch.empty(n, 2).uniform_(-0.08, 0.08, generator=gen)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    blur = torch.rand(n, generator=gen) < 0.5
    if blur.any():
        size = int(torch.randint(16, 49, (1,), generator=gen))
        low = F.interpolate(y[blur], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y[blur] = F.interpolate(low, size=x.shape[-2:], mode="bicubic", align_corners=False)
    return y.clamp(0, 1)


def image_embeddings(clip: cs.StyleCLIP, x: torch.Tensor) -> torch.Tensor:
    """Unit embeddings of many images (N, 3, H, W) in 0..1, 256 at a time."""
    return torch.cat([clip.encode_images(x[i:i + 256]) for i in range(0, len(x), 256)])


def judged_images(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in 0..1 as every judge of the zoo sees them (judge_text_to_image, the demo, bench_refiners,
    eval_zoo_pipeline): resized to the CLIP's CLIP_SIZE (bicubic, antialiased) and clamped to 0..1."""
    if images.shape[-2:] != (CLIP_SIZE, CLIP_SIZE):
        images = F.interpolate(images, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", antialias=True, align_corners=False)
    return images.clamp(0, 1)


def judged_features(clip: cs.StyleCLIP, images: torch.Tensor) -> torch.Tensor:
    """Unit embeddings of images (N, 3, H, W) in 0..1 as the judges see them (judged_images)."""
    return image_embeddings(clip, judged_images(images))


def text_embeddings(clip: cs.StyleCLIP, pooled: torch.Tensor) -> torch.Tensor:
    proj = clip.clip.text.proj
    return F.normalize(proj(pooled.to(next(proj.parameters()).device)), dim=-1)


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """(N, 3, H, W) in 0..1 -> one PNG, `columns` per row."""
    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(3, rows * h, columns * w)
    for i in range(n):
        grid[:, (i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = images[i]
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), as FID computes it:
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), with symmetric eigen-decompositions (exact for
    PSD matrices, no complex sqrtm)."""
    a, b = a.double(), b.double()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(sa)
    root = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root @ sb @ root).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + sa.trace() + sb.trace() - 2 * cross)


@torch.no_grad()
def heldout_captions(clip: cs.StyleCLIP, data: Path) -> torch.Tensor:
    """Unit text embeddings (N, D) of the held-out images' own captions, in zoo_data.load's order."""
    return text_embeddings(clip, pooled_text(clip, [CAPTIONS[0](r)
                                                    for r in zoo_data.records(data, "heldout")]))


_JUDGE_REFERENCES: dict[tuple[str, str], tuple] = {}


@torch.no_grad()
def judge_text_to_image(clip: cs.StyleCLIP, data: Path, generate, unconditional: bool = True) -> dict:
    """Judge a text -> image model on the held-out captions (the data set's own caption, one per held-out image):
    `generate(style)` gives images (N, 3, H, W) in 0..1 for the captions' embeddings (N, D), or with style None
    unconditionally. Returns the CLIP score (mean cosine of each image with its caption) and the Fréchet distance of
    CLIP image features to the held-out images, with the prompt and (unless `unconditional` is False)
    unconditional; as references the held-out images' own CLIP score and the Fréchet distance of the training
    images to the held-out ones; and "samples", the first 16 prompted images."""
    key = (clip.identity, str(data))
    if key not in _JUDGE_REFERENCES:  # the same for every model judged by this CLIP on this data
        x_held, x_train = zoo_data.load(data, "heldout", CLIP_SIZE)[0], zoo_data.load(data, "train", CLIP_SIZE)[0]
        text, real = heldout_captions(clip, data), image_embeddings(clip, (x_held + 1) / 2)
        _JUDGE_REFERENCES[key] = (text, real, {
            "captions": len(text), "real_clip_score": float((real * text).sum(1).mean()),
            "real_train_fd": frechet_distance(image_embeddings(clip, (x_train + 1) / 2), real)})
    text, real, references = _JUDGE_REFERENCES[key]
    out = dict(references)
    for name, style in (("prompt", text), ("unconditional", None))[:2 if unconditional else 1]:
        images = judged_images(generate(style))
        feats = image_embeddings(clip, images)
        out[f"{name}_clip_score"] = float((feats * text[: len(feats)]).sum(1).mean())  # the first captions
        out[f"{name}_fd"] = frechet_distance(feats, real)
        if name == "prompt":
            out["samples"] = images[:16]
    return out


def _topk(sim: torch.Tensor, target: torch.Tensor, k: int) -> float:
    return float((sim.topk(min(k, sim.shape[1]), dim=1).indices == target[:, None]).any(1).float().mean())


@torch.no_grad()
def evaluate(clip: cs.StyleCLIP, x: torch.Tensor, records: list[dict], prompt_pooled: dict[str, torch.Tensor],
             caption_pooled: torch.Tensor, name_pooled: torch.Tensor, name_index: torch.Tensor) -> dict:
    was = clip.clip.visual.training
    clip.clip.visual.eval()
    img = image_embeddings(clip, x).cpu()
    cap = text_embeddings(clip, caption_pooled).cpu()
    sim = img @ cap.T
    target = torch.arange(len(x))
    names = img @ text_embeddings(clip, name_pooled).cpu().T
    style = torch.tensor([zoo_data.STYLES.index(r["style"]) for r in records])
    cat = torch.tensor([zoo_data.CATEGORIES.index(r["category"]) for r in records])
    s_emb = text_embeddings(clip, torch.stack([prompt_pooled[STYLE_PROMPTS[s]] for s in zoo_data.STYLES])).cpu()
    c_emb = text_embeddings(clip,
                            torch.stack([prompt_pooled[CATEGORY_PROMPTS[c]] for c in zoo_data.CATEGORIES])).cpu()
    off = ~torch.eye(len(x), dtype=torch.bool)
    clip.clip.visual.train(was)
    return {
        "caption_top1": _topk(sim, target, 1), "caption_top5": _topk(sim, target, 5),
        "name_top1": _topk(names, name_index, 1), "name_top5": _topk(names, name_index, 5),
        "style_acc": float(((img @ s_emb.T).argmax(1) == style).float().mean()),
        "category_acc": float(((img @ c_emb.T).argmax(1) == cat).float().mean()),
        "cos_matching": float(sim.diagonal().mean()), "cos_other": float(sim[off].mean()),
    }


def eval_set(clip: cs.StyleCLIP, x: torch.Tensor, records: list[dict]) -> tuple:
    names = sorted({r["name"] for r in records})
    return (x, records, pooled_text(clip, [CAPTIONS[0](r) for r in records]), pooled_text(clip, names),
            torch.tensor([names.index(r["name"]) for r in records]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=ROOT / "zoo" / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     log_every=25, warmup=100, final_lr=0.0, grad_clip=1.0, threads=args.threads)
    cfg = cs.model_config(ARCH)
    tower = cs.locked_tower(cfg)
    folder = cs.text_tower_dir(tower)
    model = cs.build_clip(cfg, ARCH, folder)
    model.load_state_dict(cs.tower_tensors(folder, tower), strict=False)
    clip = cs.StyleCLIP(model, ARCH, cfg, text_tower=folder)
    model.text.transformer.requires_grad_(False).eval()

    x_train, r_train = zoo_data.load(args.data, "train", CLIP_SIZE)
    x_held, r_held = zoo_data.load(args.data, "heldout", CLIP_SIZE)
    x_train, x_held = (x_train + 1) / 2, (x_held + 1) / 2
    t0 = time.time()
    texts = sorted({c(r) for r in r_train for c in CAPTIONS})
    pooled = pooled_text(clip, texts)
    text_id = {t: i for i, t in enumerate(texts)}
    caption_ids = torch.tensor([[text_id[c(r)] for c in CAPTIONS] for r in r_train])  # (N, len(CAPTIONS))
    prompts = list(STYLE_PROMPTS.values()) + list(CATEGORY_PROMPTS.values())
    prompt_pooled = dict(zip(prompts, pooled_text(clip, prompts)))
    held = eval_set(clip, x_held, r_held)
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:len(x_held)]
    train_probe = eval_set(clip, x_train[pick], [r_train[int(i)] for i in pick])
    print(f"encoded {len(texts)} training texts with the locked tower in {time.time() - t0:.0f}s", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    # encode_images / the text projection, not forward: gradients averaged over processes by the loop (ddp=False)
    loop.module(model, "clip", ddp=False)
    opt = loop.optimizer(torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98)))
    loop.log.update(arch=ARCH, text_tower=tower, captions_per_image=len(CAPTIONS), train_images=len(x_train),
                    heldout_images=len(x_held), trained_parameters=sum(p.numel() for p in params),
                    locked_parameters=sum(p.numel() for p in model.text.transformer.parameters()))

    def evaluate_both() -> dict:
        return {"heldout": evaluate(clip, *held[:2], prompt_pooled, *held[2:]),
                "train": evaluate(clip, *train_probe[:2], prompt_pooled, *train_probe[2:])}

    loop.evaluate = evaluate_both
    if not loop.ckpt.exists() and loop.is_main:  # the untrained tower's figures, for the card
        loop.log["evals"].append({"step": 0, **evaluate_both()})
        print(json.dumps(loop.log["evals"][-1]), flush=True)
    model.visual.train()
    gen, dev = loop.gen, loop.device
    for step in loop:
        idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
        which = torch.randint(0, len(CAPTIONS), (args.batch,), generator=gen)
        tid = caption_ids[idx, which]
        img = clip.encode_images(augment(x_train[idx], gen).to(dev))
        txt = text_embeddings(clip, pooled[tid].to(dev))
        logits = model.logit_scale.exp() * img @ txt.T
        same = (tid[:, None] == tid[None, :]).float().to(dev)  # equal texts are positives of each other
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        loop.backward(loss, opt)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loop.record(loss=loss, temperature=1 / model.logit_scale.detach().exp())
    if not loop.finish():
        return
    log = loop.log
    model.eval()
    cs.save_clip_safetensors(clip, args.out, include_locked_tower=False, dtype=torch.float16)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    final = log["final"]["heldout"]
    print(f"wrote {args.out}: held-out caption top-1 {final['caption_top1']:.3f}, name top-5 {final['name_top5']:.3f}")


if __name__ == "__main__":
    main()
