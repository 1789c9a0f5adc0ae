"""Draw the example input images the shipped workflows load (example_inputs/, committed; the pack copies them into
ComfyUI's input folder when it loads, never over a user's file of the same name). Deterministic: rerun to check.

    .venv/bin/python scripts/example_inputs.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit import drawn  # noqa: E402

OUT = ROOT / "example_inputs"
SIZE = 256  # the zoo DiT's working size (the workflows scale any input to it)
WRITERS = {  # drafts blurred to 48 px, as the zoo StyleGAN's 64 px drafts are after upscaling
    "diffugan_emoji_draft.png": lambda p: drawn.write_coarse_smiley(p, SIZE, 48),  # a blurry smiley, as drafted
    "diffugan_emoji_sketch.png": lambda p: drawn.write_sketch(p, SIZE),  # a sharp open-mouthed smiley: structure
    "diffugan_emoji_painted.png": lambda p: drawn.write_painted_draft(p, SIZE, 48),  # the draft, forehead painted
    "diffugan_reference_heart.png": lambda p: drawn.write_png(drawn.heart(SIZE), p),  # a style reference image
}


def main() -> None:
    for name, write in WRITERS.items():
        write(OUT / name)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
