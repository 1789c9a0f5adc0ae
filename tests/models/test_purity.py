"""models/ is pure PyTorch: it never imports ComfyUI, statically or at run time."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "node_helpers", "latent_preview"}


def test_models_never_import_comfy_statically():
    offenders = []
    for path in sorted((ROOT / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in COMFY_MODULES]
    assert not offenders, "\n".join(offenders)


def test_pack_and_models_import_without_comfy_and_cheaply():
    code = f"""
import importlib, importlib.util, pkgutil, sys, time
t = time.perf_counter()
spec = importlib.util.spec_from_file_location("diffugan", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
m = importlib.util.module_from_spec(spec); sys.modules["diffugan"] = m; spec.loader.exec_module(m)
pack_s = time.perf_counter() - t
assert "torch" not in sys.modules, "importing the pack must not import torch"
for info in pkgutil.iter_modules([{str(ROOT / 'models')!r}]):
    importlib.import_module("diffugan.models." + info.name)
leaked = sorted(k for k in sys.modules if k.split(".")[0] in {sorted(COMFY_MODULES)!r})
assert not leaked, leaked
print(f"{{pack_s:.4f}}")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip()) < 0.5, f"pack import took {r.stdout.strip()}s"
