"""ViT ControlNet cost vs token budget: counted FLOPs and wall time of the control branch, and the whole DiT step
with the ControlNet, at budgets 10 % … 100 %, side by side in one run (same model, inputs, threads).

Timings interleave the budgets round-robin and keep each one's best of --reps, so machine noise hits every budget
alike. With random weights (the default) this measures COST ONLY, of a mixed-resolution ControlNet (--plain-tokens:
a plain top-k one). With the zoo's trained DiT, VAE and ControlNet
(--dit/--vae/--controlnet) it also measures, at each budget, how well refined images follow the control edges:
held-out emoji made coarse (--draft-px) are refined (--strength; both default to the training script's evaluation)
with their own Canny edges as control (tokens picked by edge density, as trained), and the edges of the results
are scored against the control map (F1, 1 px tolerance, over the image and inside the top-k tokens), next to the
same refinement without the ControlNet, with a mixed-resolution ControlNet's fine weights as a plain top-k one, and
with the branch spent over steps (--reuse-steps: the dense branch every n-th step; --over-steps-budgets: each step
budget x the tokens, a different interleaved group each time; Apply (Advanced)'s over_steps "reuse every n steps"
and "rotate budget over steps"; --over-steps-fixed: its rotation_top_share, the part of each step's tokens kept on
the top tokens (importance first), scored also within the top quarter of tokens by edge density). Writes
benchmarks/results/vit_controlnet.json (random) or vit_controlnet_zoo.json (trained).

    .venv/bin/python benchmarks/bench_vit_controlnet.py [--model DiT-B/2] [--size 256] [--control-depth 6]
    .venv/bin/python benchmarks/bench_vit_controlnet.py --dit zoo/dit/diffugan-emoji-dit-256.safetensors \
        --vae zoo/vae/diffugan-emoji-vae-256.safetensors \
        --controlnet zoo/diffugan_controlnet/diffugan-emoji-controlnet.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # the ControlNet trainer's edge evaluation, in trained mode
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit import metrics  # noqa: E402
from diffugan.models import dit, flops  # noqa: E402
from diffugan.models import vit_controlnet as vc  # noqa: E402


def _sha(path) -> str:
    """The first 12 hex digits of a file's sha256: which version of a model a result was measured on."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="DiT-B/2")
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--control-depth", type=int, default=6, help="DiT blocks copied into the control branch")
    ap.add_argument("--plain-tokens", action="store_true",
                    help="random mode: a plain top-k ControlNet instead of mixed-resolution tokens")
    ap.add_argument("--batch", type=int, default=2, help="rows per model call (2 = one image with CFG)")
    ap.add_argument("--budgets", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dit", type=Path, default=None, help="trained DiT (with --vae and --controlnet)")
    ap.add_argument("--vae", type=Path, default=None)
    ap.add_argument("--controlnet", type=Path, default=None)
    ap.add_argument("--images", type=int, default=32, help="trained mode: held-out images for edge F1")
    ap.add_argument("--draft-px", type=int, default=None,
                    help="trained mode: drafts made coarse at this size (default: train_zoo_controlnet.EDGE_EVAL)")
    ap.add_argument("--strength", type=float, default=None,
                    help="trained mode: refinement strength (default: train_zoo_controlnet.EDGE_EVAL)")
    ap.add_argument("--reuse-steps", default="2,4",
                    help="trained mode: also edge F1 with the dense branch computed every n-th step (Apply "
                         "(Advanced)'s over_steps 'reuse every n steps'), its residuals reused between")
    ap.add_argument("--over-steps-budgets", default="0.25",
                    help="trained mode: also edge F1 with these budgets spent over steps (Apply (Advanced)'s "
                         "'rotate budget over steps')")
    ap.add_argument("--over-steps-fixed", default="0,0.25,0.5",
                    help="trained mode: the budgets over steps with these shares fixed on the top tokens (by edge "
                         "density) at every step, the rest in turn (RotatingBudget's `fixed`: Apply (Advanced)'s "
                         "rotation_top_share, default 0)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    trained = args.dit is not None
    if trained and (args.vae is None or args.controlnet is None):
        ap.error("--dit needs --vae and --controlnet")
    args.out = args.out or ROOT / "benchmarks" / "results" / ("vit_controlnet_zoo.json" if trained else
                                                              "vit_controlnet.json")

    torch.manual_seed(0)
    if trained:
        model, net = dit.load_dit(args.dit), vc.load_controlnet(args.controlnet)
        net.check_fits(model)
        args.size, args.model, args.control_depth = 8 * model.config.input_size, args.dit.name, net.config.depth
    else:
        model = dit.DiT(dit.standard_config(args.model, args.size)).eval()
        net = vc.ViTControlNet.from_dit(model, args.control_depth, coarse_tokens=not args.plain_tokens).eval()
        with torch.no_grad():  # non-zero projections, as after training (a fresh ControlNet would add zeros)
            for layer in [net.before_proj, *net.after_proj]:
                layer.weight.normal_(0, 0.02)
            if net.config.coarse_tokens:
                net.init_coarse_from_fine()
    lat = args.size // 8
    x = torch.randn(args.batch, 4, lat, lat)
    t = torch.full((args.batch,), 500.0)
    y = torch.tensor([3] * args.batch)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, args.size), torch.linspace(-1, 1, args.size), indexing="ij")
    hint = ((((xx * 6).round() - xx * 6).abs() < 0.05) | (((yy * 6).round() - yy * 6).abs() < 0.05)).float()
    hint = hint[None, None].expand(args.batch, 3, -1, -1)  # a grid of lines as the edge map
    grid = model.grid(x)
    tokens_n = grid[0] * grid[1]
    importance = torch.rand(1, tokens_n, generator=torch.Generator().manual_seed(1))

    with torch.inference_mode():
        tokens, c = model.embed(x), model.conditioning(t, y)
        prepared = net.prepare_hint(hint, grid)

        def branch(b):
            return lambda: net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=b), importance)

        def step(b):
            control = None if b is None else (lambda tk, cc, g: net.residuals(
                tk, cc, prepared, g, vc.ControlSettings(budget=b), importance))
            return lambda: model(x, t, y, control=control)

        cases = {f"branch@{b}": branch(b) for b in budgets}
        # one step of the budget spent over steps: one interleaved quarter of the tokens
        quarter = vc.RotatingBudget(0.25).choose(importance, grid, step=2)[0].nonzero()[:, 0]
        cases["branch@0.25 over steps"] = lambda: net.residuals(tokens, c, prepared, grid,
                                                                vc.ControlSettings(budget=0.25), importance, quarter)
        cases |= {f"step@{b}": step(b) for b in budgets} | {"step@none": step(None)}
        best = {k: float("inf") for k in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)

    f1 = reuse = None
    if trained:
        ev = EdgeEval(model, net, args)
        f1 = edge_f1_by_budget(ev, budgets)
        reuse = edge_f1_with_reuse(ev, [int(n) for n in args.reuse_steps.split(",")],
                                   [float(b) for b in args.over_steps_budgets.split(",")],
                                   [float(f) for f in args.over_steps_fixed.split(",")], f1)
    dense_flops = net.flops(grid, 1.0) * args.batch
    dit_flops = flops.transformer_flops(model.config, tokens_n, tokens_n) * args.batch
    rows = []
    for b in budgets:
        f = net.flops(grid, b) * args.batch
        layout = net.select(torch.zeros(1, tokens_n), grid, b)
        row = dict(budget=b, tokens_full=tokens_n if layout is None else layout[0].shape[1],
                   tokens_merged=0 if layout is None or layout[1] is None else layout[1].shape[1], branch_flops=f,
                   branch_flops_ratio_vs_dense=dense_flops / f, branch_seconds=best[f"branch@{b}"],
                   branch_wall_ratio_vs_dense=best["branch@1.0"] / best[f"branch@{b}"],
                   step_seconds=best[f"step@{b}"],
                   step_overhead_vs_no_control=best[f"step@{b}"] / best["step@none"] - 1,
                   step_flops_overhead_vs_no_control=f / dit_flops,
                   edge_f1=f1[str(b)] if f1 else "not measured: random weights")
        if f1:
            key = str(b)
            row |= dict(edge_f1_loss_vs_dense=1 - f1[key] / f1["1.0"] if f1.get("1.0") else None,
                        control_edge_pixels_in_top_k_tokens=f1["coverage"][key],
                        edge_f1_within_top_k_tokens=f1["within"][key],
                        dense_edge_f1_within_top_k_tokens=f1["dense_within"][key])
            if key in f1["plain"]:
                row |= dict(plain_top_k_edge_f1=f1["plain"][key],
                            plain_top_k_edge_f1_within_its_tokens=f1["plain_within"][key])
        rows.append(row)
        print(f"budget {b:>4.0%}: branch FLOPs {row['branch_flops_ratio_vs_dense']:.2f}x fewer than dense, wall "
              f"{best[f'branch@{b}'] * 1000:.1f} ms ({row['branch_wall_ratio_vs_dense']:.2f}x faster); DiT step + "
              f"ControlNet {row['step_overhead_vs_no_control'] * 100:+.1f}% wall, "
              f"{row['step_flops_overhead_vs_no_control'] * 100:+.1f}% FLOPs vs no ControlNet"
              + (f"; edge F1 {f1[str(b)]:.3f}" if f1 else ""), flush=True)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="ViT ControlNet cost vs token budget", model=args.model, image_size=args.size,
        control_depth=args.control_depth, rows_per_call=args.batch, command=" ".join(sys.argv),
        tokens="mixed resolution (2x2-merged where priority is low)" if net.config.coarse_tokens else "plain top-k",
        weights=(f"trained: {args.dit.name} (sha256 {_sha(args.dit)}…) + {args.controlnet.name} "
                 f"(sha256 {_sha(args.controlnet)}…)" if trained else
                 "random (cost only; edge F1 needs a trained DiT + ControlNet)"), device="cpu",
        edge_f1_without_controlnet=f1["none"] if f1 else None, edge_f1_images=args.images if f1 else None,
        edge_f1_setting=f1["setting"] if f1 else None,
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        step_seconds_without_control=best["step@none"], results=rows,
        budget_0_25_over_steps_one_step=dict(
            tokens=len(quarter), branch_flops_ratio_vs_dense=net.flops(grid, 1.0) / net.flops(grid, 1.0, len(quarter)),
            branch_seconds=best["branch@0.25 over steps"],
            branch_wall_ratio_vs_dense=best["branch@1.0"] / best["branch@0.25 over steps"]),
        reuse_across_steps=reuse), indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


class EdgeEval:
    """The edge-F1 evaluation, loaded once: the zoo VAE, --images held-out emoji spread over the set, their labels
    and Canny edges (the control maps), the refinement overrides (--draft-px, --strength), and each image's edge
    density per token (what the budgets rank tokens by)."""

    def __init__(self, model, net, args):
        import train_zoo_controlnet as tzc
        import zoo_data

        from diffugan.models import taesd

        self.tzc, self.model, self.net = tzc, model, net
        self.vae = taesd.load_vae(args.vae)
        size = 8 * model.config.input_size  # the DiT's working size; only the drawing styles its labels know
        x, records = zoo_data.load(zoo_data.DEFAULT_OUT, "heldout", size,
                                   styles=zoo_data.known_styles(model.config.num_classes))
        pick = torch.linspace(0, len(x) - 1, args.images).round().long()
        self.x, self.y = x[pick], torch.tensor([zoo_data.zoo_label(records[i]) for i in pick])
        self.edges = vc.canny_edges(self.x * 0.5 + 0.5)
        self.kw = {k: v for k, v in (("draft_px", args.draft_px), ("strength", args.strength)) if v is not None}
        self.setting = tzc.EDGE_EVAL | self.kw
        self.grid = model.grid(torch.zeros(1, 4, self.x.shape[-2] // 8, self.x.shape[-1] // 8))
        self.density = net.edge_density(net.prepare_hint(self.edges, self.grid))
        self._dense = None

    def refined(self, budget: float | None, net=None, **kw) -> torch.Tensor:
        """Edges of the refined drafts: with `net` (default the ControlNet) at this budget, tokens by edge density
        (None: without ControlNet); kw: refined_edges' reuse_steps / over_steps."""
        settings = None if budget is None else vc.ControlSettings(budget=budget, edge_priority=1.0)
        return self.tzc.refined_edges(self.model, net or self.net, self.vae, self.x, self.y, self.edges, settings,
                                      **kw, **self.kw)

    @property
    def dense(self) -> torch.Tensor:
        """Edges of the drafts refined with the dense branch, every step (computed once)."""
        if self._dense is None:
            self._dense = self.refined(1.0)
        return self._dense

    def f1(self, pred: torch.Tensor, region: torch.Tensor | None = None) -> float:
        """Mean edge F1 against the control maps; inside `region` (pixels elsewhere masked out of both)."""
        if region is None:
            return float(metrics.edge_f1(pred, self.edges).mean())
        return float(metrics.edge_f1(pred * region, self.edges * region).mean())

    def top_tokens(self, budget: float) -> tuple[float, torch.Tensor]:
        """The top-k tokens by edge density at a budget: the share of the control edges' pixels inside them, and
        their pixels as a (N, 1, H, W) mask."""
        import torch.nn.functional as F

        top = self.density.topk(vc.budget_tokens(budget, self.density.shape[1]), 1)
        coverage = float((top.values.sum(1) / self.density.sum(1).clamp_min(1e-8)).mean())
        mask = torch.zeros_like(self.density).scatter(1, top.indices, 1.0).view(-1, 1, *self.grid)
        return coverage, F.interpolate(mask, size=self.x.shape[-2:], mode="nearest")


def edge_f1_by_budget(ev: EdgeEval, budgets) -> dict:
    """Mean edge F1 of refined held-out drafts at each budget, and without the ControlNet ("none"). At each budget
    also: the share of the control edges' pixels inside the top-k tokens by edge density ("coverage"), what a plain
    top-k budget, whose skipped tokens inject nothing, controls at all; F1 counted only inside those tokens (pixels
    elsewhere masked out of both edge maps), this budget's and the dense branch's ("within", "dense_within"); and
    for a mixed-resolution ControlNet the same with its fine weights as a plain top-k one ("plain",
    "plain_within": the token budget as defined, without merged tokens)."""
    out = {"setting": ev.setting, "coverage": {}, "within": {}, "dense_within": {}, "plain": {}, "plain_within": {},
           "none": ev.f1(ev.refined(None))}
    net, plain = ev.net, None
    if net.config.coarse_tokens:
        plain = vc.ViTControlNet(vc.ControlNetConfig(**(asdict(net.config) | {"coarse_tokens": False}))).eval()
        plain.load_state_dict({k: v for k, v in net.state_dict().items() if "_coarse" not in k})
    for b in budgets:
        key = str(b)
        out["coverage"][key], region = ev.top_tokens(b)
        pred = ev.dense if b == 1.0 else ev.refined(b)
        out[key], out["within"][key] = ev.f1(pred), ev.f1(pred, region)
        out["dense_within"][key] = ev.f1(ev.dense, region)
        line = (f"edge F1 at budget {b:.0%}: {out[key]:.3f} (without ControlNet {out['none']:.3f}; inside the top-k "
                f"tokens {out['within'][key]:.3f}, dense {out['dense_within'][key]:.3f}); control edge pixels in the "
                f"top-k tokens: {out['coverage'][key]:.1%}")
        if plain is not None:  # at budget 1 the plain path is the dense one
            pred = ev.dense if b == 1.0 else ev.refined(b, plain)
            out["plain"][key], out["plain_within"][key] = ev.f1(pred), ev.f1(pred, region)
            line += f"; plain top-k {out['plain'][key]:.3f} (inside its tokens {out['plain_within'][key]:.3f})"
        print(line, flush=True)
    return out


def edge_f1_with_reuse(ev: EdgeEval, reuse_steps, over_steps_budgets, fixed_shares, f1) -> list[dict]:
    """Edge F1 with the branch spent over steps: the dense branch at every n-th sampler step, its residuals reused
    between (ResidualReuse), or each step a part of the tokens (RotatingBudget, with each fixed share: that part of
    each step's tokens on the top tokens by edge density, the rest in turn); costs counted by the same classes over
    the sampler's steps (branch FLOPs summed over the run, against every step dense). The rotations are also scored
    within the top quarter of tokens by edge density (pixels elsewhere masked out of both edge maps), next to the
    dense branch."""
    net, grid, steps = ev.net, ev.grid, ev.setting["steps"]
    rows = []
    for n in reuse_steps:
        counter = vc.ResidualReuse(n)
        for s in range(steps):
            counter("rows", s, lambda: None)
        score = ev.f1(ev.refined(1.0, reuse_steps=n))
        rows.append(dict(reuse_steps=n, budget=1.0, branch_computations=counter.computed, steps=steps,
                         branch_flops_ratio_vs_dense=steps / counter.computed, edge_f1=score,
                         edge_f1_loss_vs_dense=1 - score / f1["1.0"] if f1.get("1.0") else None))
        print(f"dense branch every {n} steps: {steps / counter.computed:.2f}x fewer branch FLOPs, edge F1 "
              f"{score:.3f} (every step {f1.get('1.0', float('nan')):.3f})", flush=True)
    region = ev.top_tokens(0.25)[1]
    dense_within = ev.f1(ev.dense, region)
    for b in over_steps_budgets:
        for fixed in fixed_shares:
            counter, flops = vc.RotatingBudget(b, fixed), []

            def count(only):
                flops.append(net.flops(grid, 1.0, plain_tokens=only.shape[1]))
                return [torch.zeros(1, grid[0] * grid[1], 1)]  # stand-in residuals

            for s in range(steps):
                counter("rows", s, ev.density[:1], grid, count)
            pred = ev.refined(b, over_steps=fixed)
            score = ev.f1(pred)
            ratio = steps * net.flops(grid, 1.0) / sum(flops)
            rows.append(dict(budget_over_steps=b, fixed_share=fixed, branch_flops_ratio_vs_dense=ratio, steps=steps,
                             edge_f1=score, edge_f1_loss_vs_dense=1 - score / f1["1.0"] if f1.get("1.0") else None,
                             edge_f1_top_quarter_tokens=ev.f1(pred, region),
                             edge_f1_top_quarter_tokens_dense=dense_within))
            print(f"budget {b:.0%} over steps, fixed share {fixed:.0%}: {ratio:.2f}x fewer branch FLOPs, edge F1 "
                  f"{score:.3f}; within the top quarter of tokens {rows[-1]['edge_f1_top_quarter_tokens']:.3f} "
                  f"(dense {dense_within:.3f})", flush=True)
    return rows


if __name__ == "__main__":
    main()
