"""The DiffuGAN demo: starts the real ComfyUI headless with the pack, runs the shipped workflows, saves results.

    bash scripts/demo.sh            # run once, write output/demo/, print timings, stop the server
    bash scripts/demo.sh --serve    # same, then leave ComfyUI running for a browser at the printed URL

What it runs (said plainly): the zoo workflows run on TRAINED weights, the demo zoo shipped in zoo/ (a VAE, a CLIP,
a text-conditioned StyleGAN2, a style-conditioned DiT refiner, an importance scorer and a ViT ControlNet, trained on
the emoji set). For each of a few prompts (PROMPTS), emoji_coarse_to_fine draws StyleGAN drafts steered by the
prompt, scores where detail matters with the learned scorer and refines region-adaptively with the same prompt;
emoji_text2image makes its draft with 12 DiT steps instead. emoji_refine refines a coarse drawn smiley with
region-adaptive steps; emoji_controlnet does the same steered to the edges of a drawn sketch. Each writes a contact
sheet, one row per image: draft | importance (or edges) | refined, with the prompt in front for the prompted ones.
style_draft steers unprompted zoo StyleGAN drafts toward a prompt by CLIP-guided Style Inject.
The other workflows show the nodes with models the zoo does not have (a StyleGAN2 without text conditioning, a
256 px DiT-S/2), so they run on RANDOM-WEIGHT models this script writes into the demo's model folders:
diffugan-random-stylegan2-64.safetensors in models/stylegan, and for coarse_to_fine a DiT-S/2 and a VAE in ComfyUI's
TAESD layout (diffugan-random-dit-s2-256.safetensors in models/dit, diffugan-random-taesd.safetensors in
models/vae). Their timings are real; their pictures are not worth keeping. The importance workflow gets a
procedurally drawn draft with a painted emphasis mask.
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

import devkit  # noqa: E402,F401  (registers the pack as the package `diffugan`)
from devkit.harness import ComfyServer  # noqa: E402
from devkit.drawn import write_coarse_smiley, write_sketch  # noqa: E402
from devkit.random_weights import perturb  # noqa: E402
from devkit.vae_files import write_random_taesd_vae  # noqa: E402


def draw_example_draft(path: Path, size: int = 256) -> None:
    """A stand-in draft: smooth sky (little detail needed) above a textured ground, with the textured part painted
    as emphasis the way the stock mask editor stores it (alpha 0 = painted; LoadImage's MASK is 1 - alpha)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.45 + 0.3 * yy, 0.65 + 0.2 * yy, 0.95 - 0.1 * yy], -1)
    ground = 0.35 + 0.25 * np.sign(np.sin(xx * 60) * np.sin(yy * 60))[..., None] * np.array([0.8, 0.6, 0.3])
    rgb = np.where(yy[..., None] < 0.55, sky, ground)
    alpha = np.where(yy >= 0.55, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([(rgb.clip(0, 1) * 255).astype(np.uint8), alpha]), "RGBA").save(path)


def write_random_stylegan(path: Path) -> None:
    """A seeded random-weight StyleGAN2 in the real safetensors layout, so the workflow runs before the zoo exists."""
    import torch

    from diffugan.models import stylegan as sg

    torch.manual_seed(0)
    cfg = sg.StyleGANConfig("stylegan2", z_dim=128, c_dim=0, w_dim=128, img_resolution=64, img_channels=3,
                            mapping_kwargs={"num_layers": 4},
                            synthesis_kwargs={"channel_base": 4096, "channel_max": 128})
    path.parent.mkdir(parents=True, exist_ok=True)
    sg.save_stylegan_safetensors(sg.Generator(cfg), path)


def write_random_dit(path: Path) -> None:
    """A seeded random-weight DiT-S/2 for 256x256 images (DiffuGAN safetensors, config in the metadata)."""
    import torch

    from diffugan.models import dit

    torch.manual_seed(0)
    model = perturb(dit.DiT(dit.standard_config("DiT-S/2", 256)), 0.02)  # a fresh DiT outputs exactly zero
    path.parent.mkdir(parents=True, exist_ok=True)
    dit.save_dit_safetensors(model, path)


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
                    and value.endswith((".safetensors", ".pt", ".pkl", ".bin")):
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
    for node_id in sorted(run.history["outputs"], key=int):  # graph order: draft, map, refined
        for i, src in enumerate(run.output_images(node_id)):
            if src.is_relative_to(server.base / "temp"):  # previews, not results
                continue
            dst = out / f"{name}_{node_id}_{i}.png"
            shutil.copyfile(src, dst)
            saved.setdefault(prompt[node_id]["inputs"].get("filename_prefix", ""), []).append(dst)
            print(f"  wrote {dst}")
    return saved


# Workflows run once per prompt: workflow -> (node, input, prompts)
TEXTS = ["red heart", "grinning face", "flag of japan", "a noto emoji of a cat", "pizza", "rocket"]
PROMPTS = {"emoji_coarse_to_fine": ("2", "text", TEXTS), "emoji_text2image": ("2", "text", TEXTS)}

RANDOM_MODELS = [  # (model folder, file name the shipped workflows use, writer, what it is)
    ("stylegan", "diffugan-random-stylegan2-64.safetensors", write_random_stylegan, "StyleGAN2"),
    ("dit", "diffugan-random-dit-s2-256.safetensors", write_random_dit, "DiT-S/2"),
    ("vae", "diffugan-random-taesd.safetensors", write_random_taesd_vae, "TAESD-layout VAE"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="leave ComfyUI running for a browser after the demo")
    ap.add_argument("--port", type=int, default=None, help="port for --serve (default: a free one)")
    ap.add_argument("--out", type=Path, default=ROOT / "output" / "demo")
    args = ap.parse_args()

    base = ROOT / ".comfyui" / "demo_base"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    server = ComfyServer(base, port=args.port)
    print(f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']} up in {time.monotonic() - t0:.1f}s "
          f"at {server.url} (log: {server.log_path})")
    try:
        draw_example_draft(base / "input" / "example.png")
        write_coarse_smiley(base / "input" / "diffugan_emoji_draft.png")  # the zoo workflows' draft
        write_sketch(base / "input" / "diffugan_emoji_sketch.png")  # and the structure the ControlNet follows
        for folder, file_name, write, what in RANDOM_MODELS:
            path = base / "models" / folder / file_name
            if not path.exists():
                write(path)
                print(f"wrote a RANDOM-WEIGHT {what} (no trained weights yet): {path}")
        object_info = server.get("/object_info")  # after the demo's files are written: their combos list them
        for api_path in sorted((ROOT / "workflows" / "api").glob("*.json")):
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
                continue
            node, field, texts = PROMPTS[api_path.stem]
            rows = []
            for k, text in enumerate(texts):
                prompt[node]["inputs"][field] = text
                saved = run_workflow(server, f"{api_path.stem}_{k}", prompt, args.out, f"'{text}'")
                rows += [(text if i == 0 else "", list(files)) for i, files in enumerate(zip(*saved.values()))]
            sheet = prompt_sheet(rows, args.out / f"{api_path.stem}_contact_sheet.png")
            print(f"  wrote {sheet} (prompt | {' | '.join(k.split('/')[-1] for k in saved)})")
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
