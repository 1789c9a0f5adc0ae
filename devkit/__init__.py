"""Helpers shared by the repository's scripts, benchmarks and tests (not part of the node pack ComfyUI loads).

Importing `devkit` registers the pack as the package `diffugan` (from this checkout, whatever its folder is
called), so callers write `from diffugan.models import dit`. Scripts put the repository root on `sys.path` and
`import devkit` first.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def register_pack() -> None:
    if "diffugan" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("diffugan", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffugan"] = module
    spec.loader.exec_module(module)


register_pack()
os.environ.setdefault("PYTHONHASHSEED", "0")


def reference_commit(checkout: Path) -> str:
    """The commit of a reference repository's checkout (parity scripts record it), or "unknown"."""
    import subprocess

    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"
