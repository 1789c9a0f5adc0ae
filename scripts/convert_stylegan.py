"""Convert an NVIDIA StyleGAN2 / StyleGAN2-ADA / StyleGAN3 network pickle (PyTorch, or TensorFlow StyleGAN2 /
StyleGAN2-ADA) to safetensors, without executing it.

    python scripts/convert_stylegan.py ffhq.pkl                 # writes ffhq.safetensors beside it
    python scripts/convert_stylegan.py ffhq.pkl -o out.safetensors

The pickle is read by the pack's restricted unpickler (it never runs the module source NVIDIA pickles embed);
only G_ema (or G; a TensorFlow file's Gs, converted) is kept, with its architecture in the safetensors metadata, so
the result loads strictly.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pack():
    spec = importlib.util.spec_from_file_location("diffugan", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffugan"] = module
    spec.loader.exec_module(module)
    from diffugan.models import checkpoints, stylegan

    return checkpoints, stylegan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pickle", type=Path)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    checkpoints, stylegan = _pack()
    out = args.output or args.pickle.with_suffix(".safetensors")
    try:
        G = stylegan.load_stylegan(args.pickle)
    except (checkpoints.CheckpointError, OSError) as e:
        print(f"convert_stylegan: {e}", file=sys.stderr)
        return 1
    stylegan.save_stylegan_safetensors(G, out)
    c = G.config
    print(f"wrote {out}: {c.arch} {c.img_resolution}x{c.img_resolution}, z_dim={c.z_dim}, c_dim={c.c_dim}, "
          f"w_dim={c.w_dim}, num_ws={G.num_ws}, {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
