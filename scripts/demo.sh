#!/usr/bin/env bash
# One command from a fresh clone: set up (venv, pinned ComfyUI, the pack linked in), run the demo.
# `bash scripts/demo.sh --serve` leaves ComfyUI running for a browser afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" --no-browser
exec "${DIFFUGAN_VENV:-$ROOT/.venv}/bin/python" "$ROOT/scripts/demo.py" "$@"
