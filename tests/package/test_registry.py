"""Registry-ready: the Comfy Registry's own publishing checks pass (comfy-cli's `comfy node validate`, offline), the
archive it would publish (`comfy node pack`) holds what users need and not the tests or training state, and the
version follows semver. comfy-cli lives in .venv-registry (scripts/setup_env.sh), apart from ComfyUI's packages."""
import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

from devkit.harness import ROOT

COMFY = Path(os.environ.get("DIFFUGAN_REGISTRY_VENV", ROOT / ".venv-registry")) / "bin" / "comfy"


def _comfy(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    if not COMFY.exists():
        pytest.fail("comfy-cli is missing: run scripts/setup_env.sh", pytrace=False)
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([str(COMFY), "--skip-prompt", "--no-enable-telemetry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_comfy_node_validate_passes():
    r = _comfy("node", "validate")
    assert r.returncode == 0 and "All validation checks passed" in r.stdout + r.stderr, r.stdout + r.stderr


def test_validate_is_not_vacuous(tmp_path):
    """The same check on a copy of the pack with a broken version fails."""
    copy = tmp_path / "pack"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv*", ".comfyui", ".zoo", ".git", "zoo", "tests"))
    meta = (copy / "pyproject.toml").read_text()
    (copy / "pyproject.toml").write_text(re.sub(r'^version = ".*"$', 'version = ""', meta, flags=re.M))
    r = _comfy("node", "validate", cwd=copy)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "passed successfully" not in out and "version" in out.lower(), out


def test_version_is_semver_and_metadata_complete():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", meta["project"]["version"])
    assert meta["project"]["description"] and meta["project"]["license"] and meta["project"]["urls"]["Repository"]
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]


def test_published_archive_has_the_pack_and_not_the_tests(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("comfy node pack archives git-tracked files: needs a git checkout")
    r = _comfy("node", "pack")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        names = zipfile.ZipFile(ROOT / "node.zip").namelist()
    finally:
        (ROOT / "node.zip").unlink(missing_ok=True)
    tops = {n.split("/")[0] for n in names}
    assert {"nodes", "models", "js", "zoo", "example_workflows", "example_inputs", "__init__.py"} <= tops, tops
    assert not tops & {"tests", "benchmarks", ".ci", ".zoo", ".venv", ".comfyui"}, tops
    assert "js/docs/DiffuGANDiTRefine.md" in names and "example_workflows/text_to_image_hybrid.jpg" in names
    assert not [n for n in names if n.endswith(".train.pt")]
