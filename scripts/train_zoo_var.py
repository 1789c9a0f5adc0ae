"""Train the demo zoo's VAR (models/var.py) on the emoji set, in two stages, each resumable and `torchrun`-ready
(devkit.train.TrainLoop).

1. --stage vqvae: the multi-scale residual tokenizer at --size px with the scales --patch-nums (the last side is
   --size / 16). Loss: L1 + MSE on pixels plus the quantisation loss of `VQVAE.forward_train` (codebook and φ pulled
   toward the features, the encoder committed with --beta). FoundationVision's tokenizer adds perceptual and
   adversarial terms; this CPU-sized one does not. Held-out figures: reconstruction PSNR after all scales and after
   the first half, and the share of the codebook in use.
2. --stage var: the next-scale transformer on the tokens of the tokenizer from stage 1 (--vqvae), conditioned on
   the zoo CLIP's style embedding (one of the image's caption phrasings or, one time in three, the image itself;
   dropped --style-dropout of the time: no style, the unconditional side of guidance) through `style_proj`, with
   the null class as label (a style-only VAR: `num_classes` 0). Loss: cross-entropy of every scale's tokens with
   label smoothing --label-smooth (teacher forcing). Held-out figures: cross-entropy and token accuracy per scale
   with the caption and without; at the end, text -> image on the held-out captions (CLIP score and Fréchet
   distance on zoo-CLIP features, train_zoo_clip.judge_text_to_image).

    python scripts/train_zoo_var.py --stage vqvae --out .zoo/var/diffugan-emoji-var-vqvae.safetensors
    python scripts/train_zoo_var.py --stage var --vqvae .zoo/var/diffugan-emoji-var-vqvae.safetensors \\
        --style-clip zoo/clip_style/diffugan-emoji-clip.safetensors --out .zoo/var/diffugan-emoji-var.safetensors

Writes the model (fp16 safetensors), <out>.json (settings, curve, evaluations), resumes from <out>.train.pt, and at
every evaluation before the last step <out stem>.latest.safetensors (+ .json).
"""
from __future__ import annotations

import argparse
import copy
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
from diffugan.models import var as vm  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


@torch.no_grad()
def evaluate_vqvae(vq: vm.VQVAE, x: torch.Tensor, patch_nums: tuple) -> dict:
    was = vq.training
    vq.eval()
    d = next(vq.parameters()).device
    full, half, used = [], [], set()
    for i in range(0, len(x), 32):
        idx = vq.encode(x[i:i + 32].to(d), patch_nums)
        full.append(vq.decode(idx).cpu())
        k = (len(patch_nums) + 1) // 2
        half.append(vq.decode_f_hat(vq.f_hat(idx[:k], side=patch_nums[-1], scales=len(patch_nums))).cpu())
        used.update(torch.cat([j.flatten() for j in idx]).tolist())
    vq.train(was)
    return {"heldout_psnr_db": metrics.psnr(torch.cat(full), x, low=-1.0),
            f"heldout_psnr_db_first_{(len(patch_nums) + 1) // 2}_scales": metrics.psnr(torch.cat(half), x, low=-1.0),
            "codebook_used": len(used) / vq.config.vocab_size}


def train_vqvae(args) -> None:
    pns = _ints(args.patch_nums)
    train, _ = zoo_data.load(args.data, "train", args.size)
    held, _ = zoo_data.load(args.data, "heldout", args.size)
    config = vm.VQVAEConfig(vocab_size=args.vocab, z_channels=args.z_channels, ch=args.ch,
                            ch_mult=_ints(args.ch_mult), num_res_blocks=args.res_blocks, scales=len(pns),
                            share_quant_resi=args.share_phi)
    if args.size != pns[-1] * config.downsample:
        raise SystemExit(f"--size {args.size} must be the last scale ({pns[-1]}) × {config.downsample}")
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     threads=args.threads, cpu_bf16=args.bf16)
    raw = vm.VQVAE(config).train()
    loop.log.update(config={**config.__dict__}, params=sum(p.numel() for p in raw.parameters()))
    _init_from(raw, args.init, vm.load_vqvae, loop.log)
    model = loop.module(raw, ddp=False)  # forward_train, not forward: the loop averages its gradients
    ema = loop.ema(model, args.ema)
    opt = loop.optimizer(torch.optim.AdamW(raw.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0))

    def evaluate() -> dict:
        figures = evaluate_vqvae(ema, held if loop.step == args.steps else held[::4], pns)
        loop.snapshot(lambda p: vm.save_vqvae(copy.deepcopy(ema).cpu(), p, half=True), figures)
        return figures
    loop.evaluate = evaluate
    gen, dev = loop.gen, loop.device
    for _ in loop:
        x = train[torch.randint(0, len(train), (args.batch,), generator=gen)]
        x = torch.where((torch.rand(len(x), generator=gen) < 0.5)[:, None, None, None], x.flip(-1), x).to(dev)
        with loop.autocast():
            y, vq_loss, _ = raw.forward_train(x, pns, args.beta)
        rec = (y.float() - x).abs().mean() + (y.float() - x).square().mean()
        loop.backward(rec + vq_loss, opt)
        loop.record(loss=rec, vq=vq_loss)
    if loop.finish():
        vm.save_vqvae(ema.cpu(), args.out, half=True)
        args.out.with_suffix(".json").write_text(json.dumps(loop.log, indent=1))
        print(f"wrote {args.out}: held-out PSNR {loop.log['final']['heldout_psnr_db']:.2f} dB")


@torch.no_grad()
def token_cache(vq: vm.VQVAE, vq_path: Path, data: Path, split: str, size: int, pns: tuple) -> list[torch.Tensor]:
    """Every image's index maps by this tokenizer, cached beside the data by the tokenizer file's hash."""
    import hashlib

    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(vq_path.read_bytes() + repr(tuple(pns)).encode()).hexdigest()[:12]
    cache = Path(data) / f"var-tokens-{size}-{split}-{key}.safetensors"  # by tokenizer and scales
    if not cache.exists():
        x, _ = zoo_data.load(data, split, size)
        maps = [vq.encode(x[i:i + 64], pns) for i in range(0, len(x), 64)]
        save_file({f"scale{k}": torch.cat([m[k] for m in maps]).contiguous() for k in range(len(pns))}, str(cache))
    t = load_file(str(cache))
    return [t[f"scale{k}"] for k in range(len(pns))]


@torch.no_grad()
def evaluate_var(model: vm.VAR, vq: vm.VQVAE, tokens: list[torch.Tensor], style: torch.Tensor) -> dict:
    was = model.training
    model.eval()
    d = next(model.parameters()).device
    target = torch.cat(tokens, dim=1)
    ranges = model.ranges
    out = {}
    for name, s in (("", style), ("_none", torch.zeros_like(style))):
        ce, hit = torch.zeros(len(ranges)), torch.zeros(len(ranges))
        for i in range(0, len(target), 64):
            b = slice(i, i + 64)
            inputs = model.next_scale_inputs(vq, [t[b].to(d) for t in tokens])
            labels = torch.full((inputs.shape[0],), model.config.num_classes, device=d)
            logits = model(labels, inputs, s[b].to(d)).float()
            for k, (a, e) in enumerate(ranges):
                y = target[b, a:e].to(d)
                ce[k] += F.cross_entropy(logits[:, a:e].flatten(0, 1), y.flatten(), reduction="sum").cpu()
                hit[k] += (logits[:, a:e].argmax(-1) == y).sum().cpu()
        sizes = torch.tensor([e - a for a, e in ranges], dtype=torch.float) * len(target)
        out[f"ce{name}"] = float(ce.sum() / sizes.sum())
        out[f"accuracy{name}"] = float(hit.sum() / sizes.sum())
        out[f"ce_per_scale{name}"] = (ce / sizes).tolist()
    model.train(was)
    return out


def train_var(args) -> None:
    import train_zoo_clip as tzc
    from train_zoo_dit import style_vectors

    from diffugan.models import clip_style as cs

    vq = vm.load_vqvae(args.vqvae)
    pns = _ints(args.patch_nums)
    if len(pns) != vq.config.scales:
        raise SystemExit(f"--patch-nums has {len(pns)} scales but the tokenizer {args.vqvae.name} was trained on "
                         f"{vq.config.scales} (each scale has its own φ): give the tokenizer's scales")
    size = pns[-1] * vq.config.downsample
    clip = cs.load_clip(args.style_clip)
    text_train, image_train = style_vectors(clip, args.style_clip, args.data, "train")
    text_held, _ = style_vectors(clip, args.style_clip, args.data, "heldout")
    held_style = text_held[:, 0]
    config = vm.VARConfig(depth=args.depth, embed_dim=args.width, num_heads=args.heads, num_classes=0,
                          vocab_size=vq.config.vocab_size, z_channels=vq.config.z_channels, patch_nums=pns,
                          style_dim=text_train.shape[-1])
    loop = TrainLoop(args.out, steps=args.steps, seed=args.seed, settings=vars(args), eval_every=args.eval_every,
                     threads=args.threads, cpu_bf16=args.bf16)
    with loop.rank_zero_first():  # one process writes the token caches, the others then read them
        tok_train = token_cache(vq, args.vqvae, args.data, "train", size, pns)
        tok_held = token_cache(vq, args.vqvae, args.data, "heldout", size, pns)
    raw = vm.VAR(config)
    _init_var(raw)
    raw.style_clip = clip.identity
    loop.log.update(config={**config.__dict__}, style_clip=clip.identity,
                    params=sum(p.numel() for p in raw.parameters()))
    _init_from(raw, args.init, vm.load_var, loop.log)
    model = loop.module(raw.train())
    ema = loop.ema(model, args.ema)
    # weight decay on the matrices only: not on biases, gains, the position / scale tables or the temperatures
    def decays(name: str, p: torch.Tensor) -> bool:
        return p.dim() >= 2 and name not in ("pos_start", "pos_1LC", "lvl_embed.weight") \
            and not name.endswith("scale_mul_1H11")
    decay = [p for n, p in raw.named_parameters() if decays(n, p)]
    rest = [p for n, p in raw.named_parameters() if not decays(n, p)]
    opt = loop.optimizer(torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                            {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95)))
    vq = vq.to(loop.device)
    sub = slice(None, None, max(1, len(tok_held[0]) // args.eval_images))

    def evaluate() -> dict:
        full = loop.step == args.steps
        figures = evaluate_var(ema, vq, [t if full else t[sub] for t in tok_held],
                               held_style if full else held_style[sub])
        loop.snapshot(lambda p: vm.save_var(_with_clip(copy.deepcopy(ema).cpu(), clip), p, half=True), figures)
        return figures
    loop.evaluate = evaluate
    gen, dev = loop.gen, loop.device
    k = text_train.shape[1]
    for _ in loop:
        idx = torch.randint(0, len(tok_train[0]), (args.batch,), generator=gen)
        maps = [t[idx].to(dev) for t in tok_train]
        which = torch.randint(0, k + k // 2, (args.batch,), generator=gen)
        style = torch.where((which < k)[:, None], text_train[idx, which.clamp(max=k - 1)], image_train[idx])
        style = (style * (torch.rand(args.batch, generator=gen) >= args.style_dropout)[:, None]).to(dev)
        with torch.no_grad():
            inputs = raw.next_scale_inputs(vq, maps)
        labels = torch.zeros(args.batch, dtype=torch.long, device=dev)  # the null class: a style-only VAR
        with loop.autocast():
            logits = model(labels, inputs, style)
        loss = F.cross_entropy(logits.float().flatten(0, 1), torch.cat(maps, 1).flatten(),
                               label_smoothing=args.label_smooth)
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if not loop.finish():
        return
    log = loop.log
    ema = _with_clip(ema.cpu().eval(), clip)
    vq = vq.cpu()
    gen = torch.Generator().manual_seed(0)

    def generate(style):
        n = len(style) if style is not None else len(held_style)
        out = [ema.sample(vq, torch.zeros(min(32, n - i), dtype=torch.long), gen, args.cfg, args.top_k, args.top_p,
                          None if style is None else style[i:i + 32])[0] for i in range(0, n, 32)]
        return torch.cat(out)
    log["text_to_image"] = {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p,
                            **tzc.judge_text_to_image(clip, args.data, generate)}
    samples = log["text_to_image"].pop("samples")
    tzc.save_grid(samples, args.out.with_name(args.out.stem + "-samples.png"))
    vm.save_var(ema, args.out, half=True)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}: held-out token cross-entropy {log['final']['ce']:.3f} with the caption, "
          f"{log['final']['ce_none']:.3f} without; CLIP score {log['text_to_image']['prompt_clip_score']:.3f}")


def _init_from(raw, path: Path | None, load, log: dict) -> None:
    """Start `raw` from a saved model of the same architecture (e.g. the shipped one on a fresh machine); its
    training log, beside it, is chained into this one's."""
    log["init"] = None
    if path is None:
        return
    old = load(path)
    if old.config != raw.config:
        diff = {k: (v, getattr(raw.config, k)) for k, v in old.config.__dict__.items() if getattr(raw.config, k) != v}
        raise SystemExit(f"--init {path.name} is another {type(raw).__name__}: (its, these settings') {diff}; give "
                         "the settings it was trained with (its .json beside it lists them), or leave out --init")
    if getattr(old, "style_clip", "") != getattr(raw, "style_clip", ""):
        raise SystemExit(f"--init {path.name} was trained on the styles of {old.style_clip!r}, not of "
                         f"{raw.style_clip!r}: give it the --style-clip it was trained with")
    raw.load_state_dict(old.state_dict())
    log["init"] = {"path": str(path)}
    prev_log = path.with_suffix(".json")
    if prev_log.exists():
        p = json.loads(prev_log.read_text())
        log["init"].update(steps=p.get("steps_done"), final=p.get("final"), previous=p.get("init"))


def _with_clip(model: vm.VAR, clip) -> vm.VAR:
    model.style_clip = clip.identity
    return model


def _init_var(model: vm.VAR) -> None:
    """FoundationVision's initialisation in spirit: small normal weights (std sqrt(1 / 3C)), zero biases, the head
    and the adaLN gates scaled down so that every block starts near the identity."""
    std = (1 / model.config.embed_dim / 3) ** 0.5
    for name, p in model.named_parameters():
        if name.startswith("style_proj") or name.endswith("scale_mul_1H11"):
            continue
        if p.dim() >= 2 or name in ("pos_start", "pos_1LC"):
            torch.nn.init.trunc_normal_(p, std=std)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    with torch.no_grad():
        model.head.weight.mul_(0.02)
        for block in model.blocks:
            d = model.config.embed_dim
            block.ada_lin[1].weight[:2 * d].mul_(1e-5)  # the gates
            block.ada_lin[1].weight[2 * d:].mul_(0.5)
            block.attn.proj.weight.div_((2 * model.config.depth) ** 0.5)
            block.ffn.fc2.weight.div_((2 * model.config.depth) ** 0.5)
        model.head_nm.ada_lin[1].weight.mul_(0.5)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("vqvae", "var"), required=True)
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--patch-nums", default="1,2,3,4,5,6,8,10,13,16", help="the scales' sides")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too")
    ap.add_argument("--init", type=Path, default=None, help="start from this saved model of the stage (same "
                    "settings), e.g. the shipped one on a fresh machine")
    g = ap.add_argument_group("vqvae stage")
    g.add_argument("--size", type=int, default=256)
    g.add_argument("--vocab", type=int, default=1024)
    g.add_argument("--z-channels", type=int, default=16)
    g.add_argument("--ch", type=int, default=32)
    g.add_argument("--ch-mult", default="1,1,2,2,4")
    g.add_argument("--res-blocks", type=int, default=1)
    g.add_argument("--share-phi", type=int, default=4)
    g.add_argument("--beta", type=float, default=0.25)
    g = ap.add_argument_group("var stage")
    g.add_argument("--vqvae", type=Path, help="the tokenizer of stage 1")
    g.add_argument("--style-clip", type=Path, help="the zoo CLIP whose embeddings condition it")
    g.add_argument("--depth", type=int, default=8)
    g.add_argument("--width", type=int, default=256)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--label-smooth", type=float, default=0.1)
    g.add_argument("--style-dropout", type=float, default=0.1)
    g.add_argument("--eval-images", type=int, default=256)
    g.add_argument("--cfg", type=float, default=3.0, help="final text -> image evaluation")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.stage == "vqvae":
        train_vqvae(args)
    else:
        if not args.vqvae or not args.style_clip:
            ap.error("--stage var needs --vqvae and --style-clip")
        train_var(args)


if __name__ == "__main__":
    main()
