"""Shared test setup: load the pack as the package `diffugan` (tests never depend on the clone's folder name)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
for path in (TESTS, ROOT):  # test helpers (clip_files, nvidia_pickle); devkit (which registers the pack)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import devkit  # noqa: E402,F401
