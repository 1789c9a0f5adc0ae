#!/usr/bin/env bash
# Sets up everything (idempotent), runs the linter (ruff; whole runs only) and every test layer: tests/models (pure
# torch), tests/nodes (the pack inside the real ComfyUI), tests/e2e (a real ComfyUI server over HTTP/WS, and the
# real frontend in Chromium).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/models -k stylegan`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="${DIFFUGAN_VENV:-$ROOT/.venv}/bin/python"
if [ "$#" = 0 ]; then  # the whole run (CI) starts with the linter: config in pyproject.toml
  "$PY" -m ruff check . || { echo "test.sh: ruff found problems (run: .venv/bin/ruff check .)" >&2; exit 1; }
fi
set +e
"$PY" -m pytest "${@:-tests}"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
fi
exit "$rc"
