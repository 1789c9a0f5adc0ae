"""Shared test setup: load the pack as the package `diffugan` (tests never depend on the clone's folder name)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # for the _harness helpers


def _register_pack() -> None:
    if "diffugan" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "diffugan", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffugan"] = module
    spec.loader.exec_module(module)


_register_pack()
os.environ.setdefault("PYTHONHASHSEED", "0")
