"""Measure the shipped prompted workflows on the held-out captions, each run as a user runs it: the workflow's own
API graph (example_workflows/api/) in the real ComfyUI with the pack (devkit.harness.ComfyServer), changed only in
its prompt (the held-out caption, the data set's own phrasing), its batch size (1: one image per caption) and its
seeds (every seed input +i for the i-th caption). So the figures hold for what the graph really does: the
region-adaptive refine with the importance map, the ControlNet and the Decode Refinement it ships with, which
eval_zoo_pipeline's reference sampler does not reproduce (it refines densely, without the ControlNet).

For each workflow, the same figures as eval_zoo_pipeline's drafts (one stage each: the draft, the draft's round trip
through the zoo VAE (what the latent round trip alone costs) and the refined image): zoo-CLIP score with the caption,
the share of images at least as close to their caption as their draft (the demo's "closer to the prompt"), Fréchet
distance of CLIP image features to all the held-out images, and the detail ratio (high-frequency energy as a ratio
to that of the real held-out images); and the workflow's mean wall time per image.

    python scripts/eval_workflows.py                          # text_to_image_hybrid, every held-out caption
    python scripts/eval_workflows.py --workflows text_to_image_hybrid var_draft_dit_refine --every 4
    python scripts/eval_workflows.py --set 12.min_steps=0 --every 4   # a changed graph, measured beside

Results go to zoo/workflows.json (merged: one entry per workflow and --set), a sheet of the first eight captions'
draft | VAE round trip | refined rows beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import demo  # noqa: E402
import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
import eval_zoo_pipeline  # noqa: E402
import train_zoo_clip as tzc  # noqa: E402
import zoo_data  # noqa: E402
from devkit import metrics  # noqa: E402
from devkit.harness import ComfyServer, read_images  # noqa: E402

from diffugan.models import clip_style as cs  # noqa: E402
from diffugan.models import taesd  # noqa: E402

ZOO = ROOT / "zoo"


def parse_set(items: list[str], prompt: dict) -> dict[str, dict[str, object]]:
    """--set NODE.INPUT=VALUE items -> {node: {input: value}}, each checked against the graph: the node must exist
    and already have that input as a plain value (not a link); the value keeps that input's type."""
    changes: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: give NODE.INPUT=VALUE, e.g. 12.min_steps=0")
        if node not in prompt or name not in prompt[node]["inputs"]:
            raise ValueError(f"--set {item!r}: the graph has no input {name!r} on node {node!r}")
        old = prompt[node]["inputs"][name]
        if isinstance(old, list):
            raise ValueError(f"--set {item!r}: {node}.{name} is a link to another node, not a value")
        changes.setdefault(node, {})[name] = type(old)(value) if not isinstance(old, bool) else value == "true"
    return changes


def caption_graph(prompt: dict, text_input: tuple[str, str], text: str, offset: int,
                  changes: dict[str, dict[str, object]]) -> dict:
    """The graph for one caption: its prompt, the --set changes, batch size 1 and every seed +offset."""
    node, field = text_input
    run = demo.with_seed_offset(prompt, offset)
    run[node]["inputs"][field] = text
    for n in run.values():
        if isinstance(n["inputs"].get("batch_size"), int):
            n["inputs"]["batch_size"] = 1
    for n, values in changes.items():
        run[n]["inputs"].update(values)
    return run


@torch.no_grad()
def evaluate(server: ComfyServer, name: str, prompt: dict, changes: dict, data: Path, clip: cs.StyleCLIP,
             vae: taesd.TinyAutoencoder, rows: list[int]) -> tuple[dict, torch.Tensor]:
    """Runs the workflow once per held-out caption in `rows` (indices in zoo_data.load's order) and judges it.
    Returns (figures, sheet images)."""
    node, field, _ = demo.PROMPTS[name]
    records = zoo_data.records(data, "heldout")
    style = tzc.heldout_captions(clip, data)[rows]
    draft, refined, seconds = [], [], []
    for k, i in enumerate(rows):
        text = tzc.CAPTIONS[0](records[i])
        t = time.monotonic()
        run = server.run_prompt(caption_graph(prompt, (node, field), text, i, changes))
        if not run.ok:
            raise SystemExit(f"{name} failed on {text!r}: {run.error()}\n{server.log_tail()}")
        seconds.append(time.monotonic() - t)
        saved = {prompt[n]["inputs"]["filename_prefix"].rsplit("_", 1)[-1]: files
                 for n, files in run.saved_outputs().items()}
        draft.append(read_images(saved["draft"][:1]))
        refined.append(read_images(saved["refined"][:1]))
        if k % 25 == 0:
            print(f"  {name}: {k + 1}/{len(rows)} {text!r} {seconds[-1]:.1f}s", flush=True)
    draft, refined = torch.cat(draft), torch.cat(refined)
    size = draft.shape[-1]
    stages = {"draft": draft, "vae": eval_zoo_pipeline.decode(vae, eval_zoo_pipeline.encode(vae, draft)),
              "refined": refined}
    detail_real = metrics.high_frequency((zoo_data.load(data, "heldout", size)[0] + 1) / 2)
    figures = eval_zoo_pipeline.judge_stages(clip, data, stages, style, detail_real)
    figures.update(captions=len(rows), size=size, seconds_per_image=sum(seconds) / len(seconds),
                   changes=changes, graph={n: {k: v for k, v in prompt[n]["inputs"].items() if not isinstance(v, list)}
                                           for n in prompt if prompt[n]["class_type"].startswith("DiffuGANDiTRefine")})
    return figures, torch.cat([stages[k][:8] for k in stages])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflows", nargs="+", default=["text_to_image_hybrid"], choices=sorted(demo.PROMPTS))
    ap.add_argument("--data", type=Path, default=zoo_data.DEFAULT_OUT)
    ap.add_argument("--clip", type=Path, default=ZOO / "clip_style" / "diffugan-emoji-clip.safetensors")
    ap.add_argument("--vae", type=Path, default=ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    ap.add_argument("--every", type=int, default=1, help="every Nth held-out caption (1: all)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many captions (0: no limit)")
    ap.add_argument("--set", dest="changes", nargs="*", default=[], metavar="NODE.INPUT=VALUE",
                    help="change the graph (one --set applies to every workflow given)")
    ap.add_argument("--out", type=Path, default=ZOO / "workflows.json")
    ap.add_argument("--base", type=Path, default=ROOT / ".comfyui" / "eval_base", help="the ComfyUI base folder")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error(f"--every: {args.every} picks no caption; give 1 (all) or more")
    rows = list(range(0, len(zoo_data.records(args.data, "heldout")), args.every))
    rows = rows[: args.limit] if args.limit else rows
    clip, vae = cs.load_clip(args.clip), taesd.load_vae(args.vae)
    graphs = {}
    for name in args.workflows:
        prompt = json.loads((ROOT / "example_workflows" / "api" / f"{name}.json").read_text())
        try:
            graphs[name] = (prompt, parse_set(args.changes, prompt))
        except ValueError as e:
            ap.error(f"{name}: {e}")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    server = ComfyServer(args.base)
    try:
        for name, (prompt, changes) in graphs.items():
            key = name + "".join(f" {n}.{k}={v}" for n, values in changes.items() for k, v in values.items())
            figures, sheet = evaluate(server, name, prompt, changes, args.data, clip, vae, rows)
            results[key] = figures
            tzc.save_grid(sheet, args.out.with_name(f"{args.out.stem}_{key.replace(' ', '_')}.png"))
            print(f"{key}: {len(rows)} held-out captions, {figures['seconds_per_image']:.1f} s an image")
            for stage in ("draft", "vae", "refined"):
                r = figures[stage]
                closer = "" if stage == "draft" else f"  closer than the draft {r['closer_to_prompt']:.0%}"
                print(f"  {stage:8s} CLIP score {r['prompt_clip_score']:.4f}  FD {r['prompt_fd']:.4f}  "
                      f"detail {r['detail_ratio']:.3f}{closer}")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
