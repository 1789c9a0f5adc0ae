"""The DiffuGAN demo: starts the real ComfyUI headless with the pack, runs the shipped example workflows, saves
results.

    bash scripts/demo.sh            # run once, write output/demo/, print timings, stop the server
    bash scripts/demo.sh --serve    # same, then leave ComfyUI running for a browser at the printed URL
    bash scripts/demo.sh --only text_to_image_hybrid   # just these workflows (scores.json keeps the others')
    bash scripts/demo.sh --only text_to_image_hybrid --seeds 4   # 4 runs per prompt, every seed +0..+3: 96 images

What it runs (said plainly): every workflow in example_workflows/api/, as a fresh install has them: on TRAINED
weights, the demo zoo shipped in zoo/ (a VAE, a CLIP, a text-conditioned StyleGAN2, GANformer and VAR, a
style-conditioned DiT refiner and FiLM UNet, an importance scorer and a ViT ControlNet, trained on the emoji set),
with the example input images the pack copies into ComfyUI's input folder. For each of a few prompts (PROMPTS),
text_to_image_hybrid draws StyleGAN drafts steered by the prompt, scores where detail matters with the learned
scorer (plus a clicked point), steers the refiner with the ViT ControlNet on the draft's own edges and refines
region-adaptively with the same prompt; text_to_image_dit makes its draft with 12 DiT steps instead;
ganformer_draft_dit_refine draws GANformer drafts and refines where its components meet; var_draft_dit_refine draws
the zoo VAR's drafts scale by scale and refines them where the learned scorer says. The others run once:
refine_any_image (a coarse drawn smiley, refined with region-adaptive steps), sketch_controlnet_refine (the same,
steered to the edges of a drawn sketch), user_emphasis (emphasis painted in the mask editor and clicked),
style_from_reference_image (a reference picture as the style), stylegan_style_mixing, and the zoo FiLM UNet's two
(text -> image with DDIM, and StyleGAN drafts refined with the importance as per-pixel strength). Workflows that
need the user's own files (the SD 1.5 one, the VAR-d16 -> DiT-XL/2 one) are skipped with a message unless those
files are installed. Each writes a contact sheet, one row per image: draft | importance (or edges) | refined, with
the prompt in front for the prompted ones. Then what it measured: per prompted image the zoo-CLIP score with its
prompt and the detail of draft and refined, and sketch_controlnet_refine's edge F1 against its sketch with and
without the ControlNet (printed, and in <out>/scores.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit.harness import ComfyServer, read_images  # noqa: E402


def missing_files(object_info: dict, prompt: dict) -> list[str]:
    """Model/input files a workflow names that the server does not offer (its combo lists in /object_info): such a
    workflow is skipped with a message instead of failing."""
    missing = []
    for node in prompt.values():
        required = object_info[node["class_type"]]["input"].get("required", {})
        for name, value in node["inputs"].items():
            spec = required.get(name) or [None]
            options = spec[0] if isinstance(spec[0], list) else (
                spec[1].get("options") if spec[0] == "COMBO" and len(spec) > 1 else None)
            if isinstance(value, str) and options is not None and value not in options \
                    and value.endswith((".safetensors", ".pt", ".pth", ".ckpt", ".pkl", ".bin")):
                missing.append(f"{value} ({node['class_type']}.{name})")
    return missing


def contact_sheet(saved: dict[str, list[Path]], path: Path) -> Path | None:
    """One row per image, one column per Save node (in graph order): e.g. draft | importance | refined. Only for
    workflows that save a *_draft and a *_refined image; None otherwise."""
    if not any(k.endswith("_draft") for k in saved) or not any(k.endswith("_refined") for k in saved):
        return None
    rows = []
    for files in zip(*saved.values()):
        tiles = [Image.open(f).convert("RGB") for f in files]
        h = max(t.height for t in tiles)
        tiles = [t.resize((round(t.width * h / t.height), h), Image.NEAREST) for t in tiles]
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def prompt_sheet(rows: list[tuple[str, list[Path]]], path: Path) -> Path:
    """One row per image: the prompt's text (on its first row), then the row's pictures (e.g. draft | importance |
    refined)."""
    from PIL import ImageDraw

    tiles = [[Image.open(f).convert("RGB") for f in files] for _, files in rows]
    h = max(t.height for row in tiles for t in row)
    label_w = 200
    width = label_w + max(sum(t.width for t in row) for row in tiles)
    sheet = Image.new("RGB", (width, h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, ((text, _), row) in enumerate(zip(rows, tiles)):
        draw.text((6, r * h + h // 2 - 6), text[:32], fill="black")
        x = label_w
        for t in row:
            sheet.paste(t, (x, r * h))
            x += t.width
    sheet.save(path)
    return path


class Judge:
    """What the demo says about its pictures, measured: the zoo CLIP's score of an image against its prompt
    (cosine of the two embeddings, as the zoo cards' CLIP score) and its detail (high-frequency energy, as
    devkit.metrics.high_frequency)."""

    def __init__(self):
        from diffugan.models import clip_style

        self.clip = clip_style.load_clip(ROOT / "zoo" / "clip_style" / "diffugan-emoji-clip.safetensors")

    def clip_score(self, text: str, path: Path) -> float:
        import train_zoo_clip as tzc

        t = tzc.text_embeddings(self.clip, tzc.pooled_text(self.clip, [text]))
        return float((tzc.judged_features(self.clip, read_images([path])) * t).sum())

    @staticmethod
    def detail(path: Path) -> float:
        from devkit import metrics

        return metrics.high_frequency(read_images([path]))


def judge_prompted(judge: Judge, name: str, rows: list[tuple[str, dict[str, Path]]]) -> dict:
    """Per image of a prompted workflow: CLIP score with its prompt and detail, draft vs refined; per prompt: on how
    many of its images the refined one is at least as close to the prompt as its draft, and the mean change of the
    CLIP score; and for how many prompts that is most of their images. Printed."""
    scores = []
    for text, files in rows:
        draft, refined = files["draft"], files["refined"]
        scores.append({"prompt": text, "clip_draft": judge.clip_score(text, draft),
                       "clip_refined": judge.clip_score(text, refined),
                       "detail_draft": judge.detail(draft), "detail_refined": judge.detail(refined)})
    closer = sum(s["clip_refined"] >= s["clip_draft"] for s in scores)
    sharper = sum(s["detail_refined"] > s["detail_draft"] for s in scores)
    per_prompt: dict[str, dict] = {}
    for s in scores:
        p = per_prompt.setdefault(s["prompt"], {"closer": 0, "count": 0, "mean_clip_change": 0.0})
        p["closer"] += s["clip_refined"] >= s["clip_draft"]
        p["count"] += 1
        p["mean_clip_change"] += s["clip_refined"] - s["clip_draft"]
    for p in per_prompt.values():
        p["mean_clip_change"] /= p["count"]
    prompts_closer = sum(2 * p["closer"] > p["count"] for p in per_prompt.values())
    print(f"\n{name}: zoo-CLIP score with the prompt and detail (high-frequency energy), draft -> refined")
    for s in scores:
        print(f"  {s['prompt'][:28]:<28} CLIP {s['clip_draft']:.3f} -> {s['clip_refined']:.3f}   "
              f"detail {s['detail_draft'] * 1e3:.2f} -> {s['detail_refined'] * 1e3:.2f} (x1e-3)")
    print(f"  refined closer to the prompt on {closer}/{len(scores)} images, sharper on {sharper}/{len(scores)}")
    for t, p in per_prompt.items():
        print(f"    {t[:28]:<28} closer on {p['closer']}/{p['count']}, mean CLIP change {p['mean_clip_change']:+.3f}")
    print(f"  closer on most of its images for {prompts_closer} of {len(per_prompt)} prompts")
    return {"images": scores, "closer_to_prompt": closer, "sharper": sharper, "count": len(scores),
            "per_prompt": per_prompt, "prompts_closer": prompts_closer, "prompts": len(per_prompt)}


def sketch_edge_f1(server: ComfyServer, prompt: dict, saved: dict[str, list[Path]], out: Path) -> dict:
    """sketch_controlnet_refine's result against its sketch: edge F1 (1 px tolerance) of the Canny edges of the
    refined image vs the sketch's edges (the workflow's Edges node), with the ControlNet and with the same graph
    without it (the Refine node given the plain DiT); printed."""
    from devkit import metrics

    from diffugan.models import vit_controlnet as vc

    refine = next(k for k, v in prompt.items() if v["class_type"] == "DiffuGANDiTRefine")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "DiffuGANDiTLoader")
    plain = json.loads(json.dumps(prompt))
    plain[refine]["inputs"]["model"] = [loader, 0]
    without = run_workflow(server, "sketch_controlnet_refine_without_controlnet", plain, out)
    [edges_key] = [k for k in saved if k.endswith("_edges")]
    [refined_key] = [k for k in saved if k.endswith("_refined")]
    sketch = read_images(saved[edges_key]).mean(1, keepdim=True) > 0.5
    f1 = {}
    for what, files in (("with_controlnet", saved[refined_key]), ("without_controlnet", without[refined_key])):
        refined = read_images(files)
        f1[what] = float(metrics.edge_f1(vc.canny_edges(refined), sketch.float()).mean())
    print(f"\nsketch_controlnet_refine: edge F1 of the refined image against the sketch's edges: "
          f"{f1['with_controlnet']:.3f} with the ControlNet, {f1['without_controlnet']:.3f} without")
    return f1


def run_workflow(server: ComfyServer, name: str, prompt: dict, out: Path, what: str = "") -> dict[str, list[Path]]:
    """Queue one workflow, print each node's time, copy its saved images to `out`; returns them per Save prefix."""
    t = time.monotonic()
    run = server.run_prompt(prompt)
    if not run.ok:
        raise SystemExit(f"{name} failed: {run.error()}\n{server.log_tail()}")
    print(f"\n{name}{' ' + what if what else ''}: {time.monotonic() - t:.2f}s")
    for node_id, secs in run.node_seconds().items():
        print(f"  {prompt[node_id]['class_type']:<32} {secs * 1000:8.1f} ms")
    saved = {}
    for node_id, files in run.saved_outputs().items():  # graph order: draft, map, refined
        for i, src in enumerate(files):
            dst = out / f"{name}_{node_id}_{i}.png"
            shutil.copyfile(src, dst)
            saved.setdefault(prompt[node_id]["inputs"].get("filename_prefix", ""), []).append(dst)
            print(f"  wrote {dst}")
    return saved


def with_seed_offset(prompt: dict, offset: int) -> dict:
    """A copy of an API prompt with every node's integer `seed` input raised by `offset` (0: the graph as shipped)."""
    run = json.loads(json.dumps(prompt))
    for node in run.values():
        if isinstance(node["inputs"].get("seed"), int):
            node["inputs"]["seed"] += offset
    return run


# Workflows run once per prompt: workflow -> (node, input, prompts)
TEXTS = ["red heart", "grinning face", "flag of japan", "a noto emoji of a cat", "pizza", "rocket"]
PROMPTS = {"text_to_image_hybrid": ("2", "text", TEXTS), "text_to_image_dit": ("2", "text", TEXTS),
           "ganformer_draft_dit_refine": ("2", "text", TEXTS), "var_draft_dit_refine": ("2", "text", TEXTS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="leave ComfyUI running for a browser after the demo")
    ap.add_argument("--port", type=int, default=None, help="port for --serve (default: a free one)")
    ap.add_argument("--out", type=Path, default=ROOT / "output" / "demo")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORKFLOW",
                    help="run only these workflows (names in example_workflows/api/, without .json)")
    ap.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="run each prompted workflow N times, every seed input of its graph +0 .. +N-1: a larger "
                         "sample for the figures (the contact sheet gets every image)")
    args = ap.parse_args()
    names = sorted(p.stem for p in (ROOT / "example_workflows" / "api").glob("*.json"))
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        ap.error(f"--only: no workflow named {', '.join(unknown)}; the shipped ones are {', '.join(names)}")
    if args.seeds < 1:
        ap.error(f"--seeds: {args.seeds} runs nothing; give 1 (the shipped seeds) or more")

    base = ROOT / ".comfyui" / "demo_base"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    server = ComfyServer(base, port=args.port)
    print(f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']} up in {time.monotonic() - t0:.1f}s "
          f"at {server.url} (log: {server.log_path})")
    judge, scores = Judge(), {}
    try:
        object_info = server.get("/object_info")
        for name in args.only or names:
            api_path = ROOT / "example_workflows" / "api" / f"{name}.json"
            prompt = json.loads(api_path.read_text())
            missing = missing_files(object_info, prompt)
            if missing:
                print(f"\n{api_path.stem}: skipped, it needs {', '.join(missing)} (not in this install yet)")
                continue
            if api_path.stem not in PROMPTS:
                saved = run_workflow(server, api_path.stem, prompt, args.out)
                sheet = contact_sheet(saved, args.out / f"{api_path.stem}_contact_sheet.png")
                if sheet:
                    print(f"  wrote {sheet} ({' | '.join(k.split('/')[-1] for k in saved)})")
                if api_path.stem == "sketch_controlnet_refine":
                    scores[api_path.stem] = {"edge_f1": sketch_edge_f1(server, prompt, saved, args.out)}
                continue
            node, field, texts = PROMPTS[api_path.stem]
            rows, judged = [], []
            for seed in range(args.seeds):
                for k, text in enumerate(texts):
                    prompt[node]["inputs"][field] = text
                    run = with_seed_offset(prompt, seed)
                    tag, what = f"{api_path.stem}_{k}", f"'{text}'"
                    if seed:
                        tag, what = f"{tag}_seed{seed}", f"{what} (seeds +{seed})"
                    saved = run_workflow(server, tag, run, args.out, what)
                    rows += [(text if i == 0 else "", list(files)) for i, files in enumerate(zip(*saved.values()))]
                    judged += [(text, {k.rsplit("_", 1)[-1]: f for k, f in zip(saved, files)})
                               for files in zip(*saved.values())]
            sheet = prompt_sheet(rows, args.out / f"{api_path.stem}_contact_sheet.png")
            print(f"  wrote {sheet} (prompt | {' | '.join(k.split('/')[-1] for k in saved)})")
            scores[api_path.stem] = judge_prompted(judge, api_path.stem, judged)
        prompted = {k: v for k, v in scores.items() if "prompts" in v}
        if prompted:
            print("\nrefined closer to the prompt than the draft on most of a prompt's images:")
            for k, v in prompted.items():
                print(f"  {k:<28} {v['prompts_closer']} of {v['prompts']} prompts, {v['closer_to_prompt']} of "
                      f"{v['count']} images (sharper: {v['sharper']} of {v['count']})")
            print(f"  all: {sum(v['prompts_closer'] for v in prompted.values())} of "
                  f"{sum(v['prompts'] for v in prompted.values())} prompts")
        if args.only and (args.out / "scores.json").exists():  # the other workflows' figures from an earlier run
            scores = {**json.loads((args.out / "scores.json").read_text()), **scores}
        (args.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
        print(f"\nwrote {args.out / 'scores.json'}")
        if args.serve:
            print(f"\nServing ComfyUI at {server.url} — open it in a browser; Ctrl-C stops it.")
            while server.proc.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
