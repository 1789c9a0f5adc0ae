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
WRITERS = {
    "diffugan_emoji_draft.png": drawn.write_coarse_smiley,  # a blurry smiley, as a fast coarse generator draws
    "diffugan_emoji_sketch.png": drawn.write_sketch,  # a sharp smiley with an open mouth: structure to follow
    "diffugan_emoji_painted.png": drawn.write_painted_draft,  # the draft with its eyes painted as emphasis
    "diffugan_reference_heart.png": lambda p: drawn.write_png(drawn.heart(), p),  # a style reference image
}


def main() -> None:
    for name, write in WRITERS.items():
        write(OUT / name)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
