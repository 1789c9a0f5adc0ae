"""Region-adaptive DiT refinement against the baselines a ComfyUI user already has, side by side in one run.

Every method runs through ComfyUI's own sampling (`comfy.sample.sample_custom`, in this process, the pinned
ComfyUI) on the same MODEL (DiffuGAN DiT Loader's), drafts, seeds, noise, sigmas and conditioning; the stock
methods with the stock Euler sampler, ours with the region-adaptive sampler the Refine node uses:

  reference      uniform, --ref-steps steps (the same img2img ODE solved finely: the quality reference)
  uniform        uniform full refinement, K = --steps steps (the user's default; the full-cost baseline)
  region         region-adaptive at the shipped workflow's work map (learned importance -> Budget levels/budget)
  fewer_flops    uniform with the step count that costs region's counted FLOPs (KSampler with fewer steps: as
                 KSampler does, its schedule starts where int(steps / strength) total steps put it, so fewer steps
                 also start at a slightly different noise level, e.g. 5 steps at 5/16 of the schedule, 20 at 20/66)
  fewer_wall     uniform with the step count that takes region's wall time
  random_tokens  region's per-token step counts on randomly chosen tokens (same FLOPs, wrong places)
  easycache_T    core's EasyCache node (reuse_threshold T, its default start/end) on the MODEL, stock Euler
  region+easycache_T  both: EasyCache on the MODEL, our sampler on top

Drafts: the zoo StyleGAN's own drafts on held-out captions (batch 4 of one caption, as the shipped workflow's
Generate node gives, upsampled bicubic to the DiT's size as its ImageScale does) and degraded held-out images (down
to --degrade-px and back up, each with its own caption's style); CFG --cfg against the unconditional side, the
style on the positive side (DiffuGAN DiT Conditioning with class -1).

Quality, in VAE-decoded pixels, in the important region (the pixels at the work map's highest level) and the rest:
  change error  RMS(method - uniform) / RMS(uniform - draft): the share of uniform refinement's change missed
  PSNR / SSIM   against the reference; the draft row (its VAE round trip) shows whether the rest got worse
  CLIP dist     1 - cos of zoo-CLIP image embeddings to uniform's result
  (degraded)    PSNR against the clean original, per region
Cost: counted transformer FLOPs (models/flops.py; EasyCache's skipped calls count nothing) and wall time of each
method's sampling (the same ComfyUI overhead for all), batch --batch; and a batch-1 timing pass. For the region
methods, the share of their scheduled token evaluations that ran (EasyCache around the sampler skips whole steps),
for each map's most-step tokens and the rest.

    .venv/bin/python benchmarks/bench_refine.py --dit <the 256-token zoo DiT> --vae <its VAE> --levels 4 \\
        --budget 0.1 --min-steps 3 --easycache 0.02,0.05,0.1,0.2,0.4 --stack 0.02,0.05 --threads 1
                                          # -> benchmarks/results/refine_zoo.json (the shipped workflows' setting)
    .venv/bin/python benchmarks/bench_refine.py --scale DiT-XL/2 --size 256 --batch 2   # random weights, speed only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import harness  # noqa: E402

ZOO = ROOT / "zoo"
TARGETS = {"flops_ratio": 3.0, "wall_speedup": 2.5, "important_change_error": 0.10, "stack_over_either": 1.5}


def comfy_runtime():
    """The pinned ComfyUI imported in this process on the CPU, and the pack's DiT nodes module."""
    sys.path.insert(0, str(harness.COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401

    from diffugan.nodes import dit as dit_nodes

    logging.getLogger().setLevel(logging.WARNING)  # the samplers' per-run info lines
    return dit_nodes


class Runner:
    """Runs one img2img refinement of a batch through ComfyUI and counts its transformer FLOPs."""

    def __init__(self, dit_nodes, net, strength: float, cfg: float):
        import comfy.samplers

        self.nodes, self.net, self.strength, self.cfg = dit_nodes, net, strength, cfg
        self.model = dit_nodes.dit_to_comfy_model(net)
        self.euler = comfy.samplers.sampler_object("euler")
        self.rows = 0
        net.register_forward_pre_hook(lambda mod, a: setattr(self, "rows", self.rows + a[0].shape[0]))
        from diffugan.models.flops import transformer_flops

        t = net.config.input_size // net.config.patch_size
        self.row_flops = transformer_flops(net.config, t * t, t * t)

    def sigmas(self, steps: int) -> torch.Tensor:
        """What KSampler / the Refine node use for `steps` steps at this strength (denoise)."""
        import comfy.samplers

        total = int(steps / self.strength) if self.strength < 1 else steps
        ms = self.model.get_model_object("model_sampling")
        return comfy.samplers.calculate_sigmas(ms, "normal", total).cpu()[-(steps + 1):]

    def easycache(self, threshold: float):
        from comfy_extras.nodes_easycache import EasyCacheNode

        return EasyCacheNode.execute(self.model.clone(), threshold, 0.15, 0.95, False).args[0]

    def __call__(self, latent, noise, positive, negative, steps, work=None, counts=None, model=None,
                 min_steps=0, border=0):
        """-> (samples, counted FLOPs, wall seconds, report of the region run or {})."""
        import comfy.sample

        report = {}
        if work is None and counts is None:
            sampler = self.euler
        elif counts is not None:  # exact per-token counts (random tokens): a token-grid map, no border
            g = self.net.config.input_size // self.net.config.patch_size
            p = self.net.config.patch_size
            level = ((counts.float() - min_steps) / max(steps - min_steps, 1)).view(-1, g, g)
            level = level.repeat_interleave(p, 1).repeat_interleave(p, 2)  # each token's pixels: its level
            sampler = self.nodes.region_sampler(level, min_steps, 0, 0, report)
        else:
            sampler = self.nodes.region_sampler(work, min_steps, border, 0, report)
        self.rows = 0
        t = time.perf_counter()
        out = comfy.sample.sample_custom(model or self.model, noise, self.cfg, sampler, self.sigmas(steps),
                                         positive, negative, latent, disable_pbar=True, seed=0)
        wall = time.perf_counter() - t
        flops = report["flops"] if report else self.rows * self.row_flops
        return out, flops, wall, report


def conditioning(dit_nodes, style: torch.Tensor):
    """Positive: class -1 with one style per image (B, D); negative: no style (zeros), as DiffuGAN DiT Conditioning."""
    def side(s):
        extra = {"dit_label": dit_nodes.NULL_LABEL, "dit_style": s.float(), "dit_style_clip": ""}
        return [[torch.zeros(1, 1, 1), extra]]

    return side(style), side(torch.zeros_like(style))


def zoo_drafts(args, size: int):
    """(images (N, 3, size, size) in 0..1, styles (N, D), kind per image, clean originals or None, names)."""
    import train_zoo_clip as tzc
    import train_zoo_stylegan as tzs
    import zoo_data

    from diffugan.models import clip_style as cs
    from diffugan.models import stylegan as sg

    from diffugan.models import region

    clip = cs.load_clip(args.clip)
    real, records = zoo_data.load(zoo_data.DEFAULT_OUT, "heldout", size)
    style = tzc.heldout_captions(clip, zoo_data.DEFAULT_OUT)
    G = sg.load_stylegan(args.stylegan)
    pick = torch.linspace(0, len(records) - 1, args.captions).round().long().tolist()
    gen, gen_style, names = [], [], []
    for j, i in enumerate(pick):  # one caption, a batch of 4 drafts (seeds j*4..), as Generate batch_size 4 gives
        s = style[i:i + 1].expand(4, -1)
        gen.append(tzs.sample_images(G, s, 4, args.seed + j, args.psi))
        gen_style.append(s)
        names += [records[i]["name"]] * 4
    gen = F.interpolate(torch.cat(gen), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    pick = torch.linspace(1, len(records) - 2, args.degraded).round().long().tolist()
    clean = (real[pick] + 1) / 2
    degraded = region.coarse(clean, args.degrade_px).clamp(0, 1)
    names += [records[i]["name"] for i in pick]
    images = torch.cat([gen, degraded])
    kinds = ["stylegan"] * len(gen) + ["degraded"] * len(degraded)
    return images, torch.cat(gen_style + [style[pick]]), kinds, clean, names, clip


def importance_scores(images: torch.Tensor, scorer_path: Path) -> torch.Tensor:
    """The shipped workflow's DiffuGAN Importance (Learned): (N, 1, H, W) in 0..1."""
    from diffugan.models import importance

    return importance.load_scorer(scorer_path).score(images)


def work_maps(scores: torch.Tensor, levels: int, budget: float) -> torch.Tensor:
    """The scores through DiffuGAN Importance Budget, as the shipped workflow does: (N, H, W) work levels."""
    from diffugan.models import importance

    return importance.budget_levels(scores, levels, budget)[:, 0]


def important_pixels(work: torch.Tensor) -> torch.Tensor:
    """(N, H, W) work maps -> (N, 1, H, W) bool: the pixels at each map's highest level (where it asks for most)."""
    return (work >= work.flatten(1).amax(1).view(-1, 1, 1) - 1e-6)[:, None]


def masked_rms(a, b, mask) -> float:
    err = (a - b).square().mean(1, keepdim=True)[mask]
    return float(err.mean().sqrt()) if err.numel() else float("nan")


def masked_psnr(a, ref, mask) -> float:
    err = (a.clamp(0, 1) - ref).square().mean(1, keepdim=True)[mask]
    return 10 * math.log10(1 / max(float(err.mean()), 1e-12)) if err.numel() else float("nan")


def masked_ssim(a, ref, mask) -> float:
    from kornia.metrics import ssim

    s = ssim(a.clamp(0, 1), ref.clamp(0, 1), 11).mean(1, keepdim=True)[mask]
    return float(s.mean()) if s.numel() else float("nan")


def quality(pix: dict, draft: torch.Tensor, important: torch.Tensor, clip, clean: dict) -> dict:
    """Per method: change error, PSNR/SSIM vs the reference, CLIP distance to uniform, PSNR vs clean originals."""
    import train_zoo_clip as tzc

    u, ref = pix["uniform"], pix["reference"]
    emb_u = tzc.image_embeddings(clip, u)
    out = {}
    for m, x in {"draft": draft, **pix}.items():
        q = {}
        for name, mask in (("important", important), ("rest", ~important)):
            q[f"change_error_{name}"] = masked_rms(x, u, mask) / max(masked_rms(u, draft, mask), 1e-12)
            q[f"psnr_{name}_db"] = masked_psnr(x, ref, mask)
            q[f"ssim_{name}"] = masked_ssim(x, ref, mask)
            if clean:
                q[f"psnr_clean_{name}_db"] = masked_psnr(x[clean["rows"]], clean["images"], mask[clean["rows"]])
        q["clip_distance_to_uniform"] = float(1 - (tzc.image_embeddings(clip, x) * emb_u).sum(-1).mean())
        out[m] = q
    return out


def load_zoo(args, dit_nodes):
    """The zoo DiT, its VAE, the drafts (images, styles, kinds, clean originals, names), the zoo CLIP, the drafts'
    latents and a Runner."""
    from diffugan.models import dit, taesd

    net = dit.load_dit(args.dit).eval().requires_grad_(False)
    vae = taesd.load_vae(args.vae).eval()
    drafts = zoo_drafts(args, 8 * net.config.input_size)
    with torch.no_grad():
        latents = torch.cat([vae.encode(drafts[0][i:i + 16] * 2 - 1) for i in range(0, len(drafts[0]), 16)])
    return net, vae, drafts, latents, Runner(dit_nodes, net, args.strength, args.cfg)


def zoo(args, dit_nodes) -> dict:
    net, vae, (images, styles, kinds, clean, names, clip), latents, run = load_zoo(args, dit_nodes)
    cfgm = net.config
    grid = cfgm.input_size // cfgm.patch_size
    work = work_maps(importance_scores(images, args.scorer), args.levels, args.budget)
    K = args.steps
    ec_models = {t: run.easycache(t) for t in args.easycache}
    gen = torch.Generator().manual_seed(3)
    methods: dict[str, dict] = {}
    outs: dict[str, list] = {}
    counts_all, k_flops, k_wall = [], None, None

    def record(name, res):
        out, flops, wall, report = res
        m = methods.setdefault(name, {"flops": 0, "wall_s": 0.0})
        m["flops"] += flops
        m["wall_s"] += wall
        outs.setdefault(name, []).append(out)
        if "done" in report:  # which scheduled token evaluations ran (EasyCache around it may skip whole steps)
            top = report["counts"] == report["counts"].amax(1, keepdim=True)  # (B, T): each map's most-step tokens
            sched, done = report["scheduled"].sum(1), report["done"].sum(1)  # (B, T) evaluations per token
            for part, mask in (("top_tokens", top), ("rest", ~top)):
                kept = m.setdefault("evaluations_kept", {}).setdefault(part, [0, 0])
                kept[0], kept[1] = kept[0] + int(done[mask].sum()), kept[1] + int(sched[mask].sum())

    import comfy.sample

    with torch.inference_mode():
        b0 = slice(0, args.batch)  # warm-up: first calls allocate
        pos, neg = conditioning(dit_nodes, styles[b0])
        run(latents[b0], torch.zeros_like(latents[b0]), pos, neg, 2)
        run(latents[b0], torch.zeros_like(latents[b0]), pos, neg, 2, work=work[b0])
        for i in range(0, len(images), args.batch):
            b = slice(i, i + args.batch)
            lat, w = latents[b], work[b]
            noise = comfy.sample.prepare_noise(lat, args.seed + i)
            pos, neg = conditioning(dit_nodes, styles[b])
            record("uniform", run(lat, noise, pos, neg, K))
            res = run(lat, noise, pos, neg, K, work=w, min_steps=args.min_steps, border=args.border)
            record("region", res)
            counts = res[3]["counts"]
            counts_all.append(counts)
            if k_flops is None:  # the fewer-steps baselines' step counts, from the first batch
                k_flops = max(1, round(K * methods["region"]["flops"] / methods["uniform"]["flops"]))
                k_wall = max(1, round(K * methods["region"]["wall_s"] / methods["uniform"]["wall_s"]))
            record("fewer_flops", run(lat, noise, pos, neg, k_flops))
            record("fewer_wall", run(lat, noise, pos, neg, k_wall))
            shuffled = torch.stack([c[torch.randperm(len(c), generator=gen)] for c in counts])
            record("random_tokens", run(lat, noise, pos, neg, K, counts=shuffled, min_steps=args.min_steps))
            for t, m in ec_models.items():
                record(f"easycache_{t:g}", run(lat, noise, pos, neg, K, model=m))
            for t in args.stack:
                record(f"region+easycache_{t:g}", run(lat, noise, pos, neg, K, work=w, model=ec_models[t],
                                                      min_steps=args.min_steps, border=args.border))
            record("reference", run(lat, noise, pos, neg, args.ref_steps))
            print(f"drafts {i + lat.shape[0]}/{len(images)}: " + ", ".join(
                f"{k} {v['wall_s']:.1f}s" for k, v in methods.items()), flush=True)
        batch1 = batch_one(run, latents, styles, work, args, k_flops, k_wall, ec_models, dit_nodes)
    counts = torch.cat(counts_all)
    important = important_pixels(work)
    with torch.no_grad():
        pix = {m: decode(vae, torch.cat(v)) for m, v in outs.items()}
        draft = decode(vae, latents)
    rows = [i for i, k in enumerate(kinds) if k == "degraded"]
    per_kind = {}
    for kind in ("stylegan", "degraded"):
        sel = [i for i, k in enumerate(kinds) if k == kind]
        cl = {"rows": [sel.index(r) for r in rows], "images": clean} if kind == "degraded" else {}
        per_kind[kind] = quality({m: p[sel] for m, p in pix.items()}, draft[sel], important[sel], clip, cl)
    result = dict(
        benchmark="region-adaptive DiT refinement vs uniform, fewer steps, random tokens and core EasyCache",
        command=" ".join(sys.argv), weights=args.weights,
        model=asdict(cfgm), tokens=grid * grid, drafts={k: kinds.count(k) for k in ("stylegan", "degraded")},
        draft_names=names, batch=args.batch, cfg=args.cfg, steps=K, ref_steps=args.ref_steps,
        strength=args.strength, min_steps=args.min_steps, border=args.border, levels=args.levels,
        budget=args.budget, fewer_flops_steps=k_flops, fewer_wall_steps=k_wall, machine=machine(),
        important_pixel_fraction=float(important.float().mean()),
        full_step_token_fraction=float((counts == K).float().mean()),
        mean_token_step_fraction=float(counts.float().mean() / K),
        cost={m: {**v, **({"evaluations_kept": {k: a / b for k, (a, b) in v["evaluations_kept"].items()}}
                          if "evaluations_kept" in v else {}),
                  "flops_ratio": methods["uniform"]["flops"] / max(v["flops"], 1),
                  "wall_speedup": methods["uniform"]["wall_s"] / v["wall_s"]} for m, v in methods.items()},
        batch1=batch1, quality=per_kind)
    result["targets"] = verdict(result)
    save_sheet(pix, draft, important, args.out.with_suffix(".png"), kinds)
    return result


def frontier(args, dit_nodes) -> dict:
    """Region-adaptive vs uniform over (strength, min steps, budget): counted FLOPs, wall time (interleaved with
    uniform's) and the share of uniform refinement's change missed in the important region and the rest."""
    import comfy.sample

    net, vae, (images, styles, kinds, clean, names, clip), latents, run = load_zoo(args, dit_nodes)
    K, points = args.steps, []
    draft = decode(vae, latents)
    scores = importance_scores(images, args.scorer)  # once: each setting only re-budgets them
    batches = [slice(i, i + args.batch) for i in range(0, len(images), args.batch)]
    noises = [comfy.sample.prepare_noise(latents[b], args.seed + b.start) for b in batches]
    conds = [conditioning(dit_nodes, styles[b]) for b in batches]
    with torch.inference_mode():
        b0 = slice(0, args.batch)
        pos, neg = conditioning(dit_nodes, styles[b0])
        run(latents[b0], torch.zeros_like(latents[b0]), pos, neg, 2)
        for strength in args.strengths:
            run.strength = strength
            uniform, u_flops, u_wall = [], 0, 0.0
            for b, noise, (pos, neg) in zip(batches, noises, conds):
                out, f, w, _ = run(latents[b], noise, pos, neg, K)
                uniform.append(out)
                u_flops, u_wall = u_flops + f, u_wall + w
            u = decode(vae, torch.cat(uniform))
            for levels, budget in args.maps:
                work = work_maps(scores, levels, budget)
                important = important_pixels(work)
                for min_steps in args.min_steps_list:
                    outs, flops, wall = [], 0, 0.0
                    for b, noise, (pos, neg) in zip(batches, noises, conds):
                        out, f, w, _ = run(latents[b], noise, pos, neg, K, work=work[b], min_steps=min_steps)
                        outs.append(out)
                        flops, wall = flops + f, wall + w
                    r = decode(vae, torch.cat(outs))
                    p = {"strength": strength, "levels": levels, "budget": budget, "min_steps": min_steps,
                         "flops_ratio": u_flops / flops, "wall_speedup": u_wall / wall,
                         "change_error_important": masked_rms(r, u, important) / masked_rms(u, draft, important),
                         "change_error_rest": masked_rms(r, u, ~important) / masked_rms(u, draft, ~important)}
                    p["targets_met"] = (p["flops_ratio"] >= TARGETS["flops_ratio"]
                                        and p["wall_speedup"] >= TARGETS["wall_speedup"]
                                        and p["change_error_important"] <= TARGETS["important_change_error"])
                    points.append(p)
                    print(" ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items()),
                          flush=True)
    return dict(benchmark="region-adaptive refinement's cost/quality frontier on the zoo DiT",
                command=" ".join(sys.argv), weights=args.weights,
                model=asdict(net.config), drafts={k: kinds.count(k) for k in ("stylegan", "degraded")},
                batch=args.batch, cfg=args.cfg, steps=K, machine=machine(), targets=TARGETS, points=points)


def batch_one(run, latents, styles, work, args, k_flops, k_wall, ec_models, dit_nodes) -> dict:
    """Wall time at batch 1 (the first --batch1 drafts, one at a time), methods interleaved."""
    import comfy.sample

    walls: dict[str, float] = {}
    flops: dict[str, int] = {}
    K, t0 = args.steps, min(args.stack) if args.stack else None
    for i in range(args.batch1):
        b = slice(i, i + 1)
        lat, w = latents[b], work[b]
        noise = comfy.sample.prepare_noise(lat, args.seed + 1000 + i)
        pos, neg = conditioning(dit_nodes, styles[b])
        jobs = {"uniform": dict(steps=K), "region": dict(steps=K, work=w), "fewer_flops": dict(steps=k_flops),
                "fewer_wall": dict(steps=k_wall)}
        for t in ec_models:
            jobs[f"easycache_{t:g}"] = dict(steps=K, model=ec_models[t])
        if t0 is not None:
            jobs[f"region+easycache_{t0:g}"] = dict(steps=K, work=w, model=ec_models[t0])
        for name, kw in jobs.items():
            if "work" in kw:
                kw.update(min_steps=args.min_steps, border=args.border)
            _, f, wall, _ = run(lat, noise, pos, neg, **kw)
            walls[name] = walls.get(name, 0.0) + wall
            flops[name] = flops.get(name, 0) + f
    return {m: {"wall_s": walls[m], "flops": flops[m], "wall_speedup": walls["uniform"] / walls[m],
                "flops_ratio": flops["uniform"] / max(flops[m], 1)} for m in walls}


def verdict(r: dict) -> dict:
    """The issue's targets, each with the figures it was judged on."""
    cost, q = r["cost"], r["quality"]
    err = {k: q[k]["region"]["change_error_important"] for k in q}
    out = {"flops_ratio": {"value": cost["region"]["flops_ratio"], "target": TARGETS["flops_ratio"]},
           "wall_speedup": {"value": cost["region"]["wall_speedup"], "target": TARGETS["wall_speedup"]},
           "important_change_error": {"value": err, "target": TARGETS["important_change_error"]}}
    for k in out:
        v = out[k]["value"]
        out[k]["met"] = (max(v.values()) <= out[k]["target"]) if isinstance(v, dict) else v >= out[k]["target"]
    # at equal wall time: region's important-region error against every baseline at no less speed (none: not met)
    wins = {}
    for kind, qk in q.items():
        mine = qk["region"]["change_error_important"]
        rivals = {m: qk[m]["change_error_important"] for m in qk
                  if m.startswith(("fewer_", "random_tokens", "easycache"))
                  and cost[m]["wall_speedup"] >= 0.95 * cost["region"]["wall_speedup"]}
        wins[kind] = {"region": mine, "rivals_at_no_less_speed": rivals,
                      "met": bool(rivals) and all(mine < v for v in rivals.values())}
    out["equal_wall_smaller_error"] = wins
    out["rest_not_worse_than_draft"] = {
        kind: {"draft_psnr_rest_db": qk["draft"]["psnr_rest_db"], "region_psnr_rest_db": qk["region"]["psnr_rest_db"],
               "met": qk["region"]["psnr_rest_db"] >= qk["draft"]["psnr_rest_db"]} for kind, qk in q.items()}
    stacks = [m for m in cost if m.startswith("region+easycache_")]
    out["stacked"] = {}
    for m in stacks:  # "at the same quality bound": the important region within the error target
        st = {"wall_speedup": cost[m]["wall_speedup"],
              "over_region": cost[m]["wall_speedup"] / cost["region"]["wall_speedup"],
              "over_easycache": cost[m]["wall_speedup"] / cost[m.split("+")[1]]["wall_speedup"],
              "change_error_important": {k: q[k][m]["change_error_important"] for k in q},
              "target_over_either": TARGETS["stack_over_either"]}
        st["met"] = (min(st["over_region"], st["over_easycache"]) >= TARGETS["stack_over_either"]
                     and max(st["change_error_important"].values()) <= TARGETS["important_change_error"])
        out["stacked"][m] = st
    return out


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(z[i:i + 16].float()).clamp(-1, 1) * 0.5 + 0.5 for i in range(0, len(z), 16)])


def save_sheet(pix: dict, draft, important, path: Path, kinds) -> None:
    """Rows: draft (important region outlined), uniform, region, fewer_wall, the easycache closest in speed, reference;
    columns: the first 4 StyleGAN drafts of two captions and 4 degraded images."""
    import train_zoo_clip as tzc

    cols = [0, 1, 4, 5] + [i for i, k in enumerate(kinds) if k == "degraded"][:4]
    edge = important.float() - F.max_pool2d(-important.float(), 3, 1, 1).neg()  # outline of the region
    marked = torch.where(edge.bool(), torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), draft)
    rows = [marked] + [pix[m] for m in ("uniform", "region", "fewer_wall", "random_tokens", "reference") if m in pix]
    tzc.save_grid(torch.cat([r[cols] for r in rows]), path, columns=len(cols))


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def machine() -> dict:
    return {"device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def scale(args, dit_nodes) -> dict:
    """Real DiT shapes with random weights (speed only): uniform vs region vs uniform with fewer steps at equal
    FLOPs, and the region's wall speed-up as a share of its counted-FLOPs ratio (the bookkeeping's cost)."""
    from devkit.random_weights import perturb
    from diffugan.models import dit

    net = perturb(dit.DiT(dit.standard_config(args.scale, args.size)).eval(), 0.02).requires_grad_(False)
    lat_hw = args.size // 8
    run = Runner(dit_nodes, net, args.strength, args.cfg)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(args.batch, 4, lat_hw, lat_hw, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, args.size), torch.linspace(-1, 1, args.size), indexing="ij")
    work = ((xx ** 2 + yy ** 2) <= args.area * 4 / math.pi).float()[None].expand(args.batch, -1, -1)
    pos = [[torch.zeros(1, 1, 1), {"dit_label": 1}]]
    neg = dit_nodes._conditioning(dit_nodes.NULL_LABEL)
    noise = torch.randn(latents.shape, generator=g)
    res = {}
    with torch.inference_mode():
        run(latents, noise, pos, neg, 1)
        run(latents, noise, pos, neg, 2, work=work)
        for rep in range(args.repeats):  # interleaved; the fastest of each kept
            for name, kw in (("uniform", {}), ("region", dict(work=work, min_steps=args.min_steps,
                                                              border=args.border))):
                _, flops, wall, _ = run(latents, noise, pos, neg, args.steps, **kw)
                best = res.setdefault(name, {"flops": flops, "wall_s": wall})
                best["wall_s"] = min(best["wall_s"], wall)
                print(f"{name} {wall:.1f}s", flush=True)
            if rep == 0:
                k = max(1, round(args.steps * res["region"]["flops"] / res["uniform"]["flops"]))
            _, flops, wall, _ = run(latents, noise, pos, neg, k)
            best = res.setdefault("fewer_flops", {"flops": flops, "wall_s": wall, "steps": k})
            best["wall_s"] = min(best["wall_s"], wall)
    flops_ratio = res["uniform"]["flops"] / res["region"]["flops"]
    wall_speedup = res["uniform"]["wall_s"] / res["region"]["wall_s"]
    return dict(benchmark="region-adaptive refinement at real DiT shapes (random weights: SPEED ONLY)",
                command=" ".join(sys.argv), model=asdict(net.config), size=args.size,
                tokens=(lat_hw // net.config.patch_size) ** 2,
                batch=args.batch, cfg=args.cfg, steps=args.steps, strength=args.strength, area=args.area,
                min_steps=args.min_steps, border=args.border, machine=machine(), methods=res,
                flops_ratio=flops_ratio, wall_speedup=wall_speedup,
                wall_share_of_flops_ratio=wall_speedup / flops_ratio,
                region_vs_fewer_flops_wall=res["fewer_flops"]["wall_s"] / res["region"]["wall_s"],
                target_wall_share=0.85, met=wall_speedup / flops_ratio >= 0.85)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dit", type=Path, default=ZOO / "dit" / "diffugan-emoji-dit-256.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    ap.add_argument("--scorer", type=Path, default=ZOO / "diffugan_importance" / "diffugan-emoji-scorer.safetensors")
    ap.add_argument("--stylegan", type=Path, default=ZOO / "stylegan" / "diffugan-emoji-stylegan.safetensors")
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--captions", type=int, default=4, help="held-out captions, 4 StyleGAN drafts each")
    ap.add_argument("--degraded", type=int, default=16, help="degraded held-out images")
    ap.add_argument("--degrade-px", type=int, default=48)
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batch1", type=int, default=4, help="drafts timed one at a time")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--border", type=int, default=0)
    ap.add_argument("--levels", type=int, default=4, help="Budget node: work levels")
    ap.add_argument("--budget", type=float, default=0.1, help="Budget node: mean work")
    ap.add_argument("--easycache", type=lambda s: [float(v) for v in s.split(",")], default=[0.05, 0.1, 0.2, 0.4],
                    help="EasyCache reuse thresholds (its default is 0.2)")
    ap.add_argument("--stack", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.1, 0.2],
                    help="thresholds of EasyCache stacked with the region sampler (each also in --easycache)")
    ap.add_argument("--frontier", action="store_true", help="map the cost/quality frontier instead")
    ap.add_argument("--strengths", type=lambda s: [float(v) for v in s.split(",")], default=[0.3, 0.5],
                    help="frontier: strengths")
    ap.add_argument("--maps", type=lambda s: [(int(v.split(":")[0]), float(v.split(":")[1])) for v in s.split(",")],
                    default=[(2, 0.1), (2, 0.15), (2, 0.25), (4, 0.25)], help="frontier: Budget levels:budget pairs")
    ap.add_argument("--min-steps-list", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4, 6],
                    help="frontier: min steps")
    ap.add_argument("--scale", default=None, help="real-scale speed mode: a standard DiT (e.g. DiT-XL/2), random")
    ap.add_argument("--size", type=int, default=256, help="real-scale mode: image size")
    ap.add_argument("--area", type=float, default=0.25, help="real-scale mode: important disc's share of the image")
    ap.add_argument("--repeats", type=int, default=2, help="real-scale mode: timing repeats")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not set(args.stack) <= set(args.easycache):
        ap.error("--stack thresholds must also be in --easycache (the stack is judged against EasyCache alone)")
    # the files' hashes before anything loads them (a training run may replace a snapshot while this runs)
    files = () if args.scale else ("dit", "vae", "scorer", "stylegan", "clip")
    args.weights = {k: sha(getattr(args, k)) for k in files}
    dit_nodes = comfy_runtime()
    torch.manual_seed(0)
    if args.scale:
        name = f"refine_scale_{args.scale.replace('/', '')}_{args.size}.json"
        result = scale(args, dit_nodes)
    elif args.frontier:
        name = "refine_frontier_zoo.json"
        result = frontier(args, dit_nodes)
    else:
        name = "refine_zoo.json"
        args.out = args.out or ROOT / "benchmarks" / "results" / name
        result = zoo(args, dit_nodes)
    out = (args.out or ROOT / "benchmarks" / "results" / name).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("targets", {k: result[k] for k in ("flops_ratio", "wall_speedup",
                                                                    "wall_share_of_flops_ratio")
                                            if k in result}), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
