"""Every loader of a user file against the hostile-file corpus (corpus.py), each load in a fresh process
(run_corpus.py): nothing runs, nothing crashes or hangs, and every refusal is a CheckpointError that names the file.

The loaders come from the registry (models.checkpoints.LOADERS, filled by @user_file_loader, and RAW_READERS), so a
loader added later is run the day it lands; a `load_*` function in models/ that is not registered fails here.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffugan.models import checkpoints as ck

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent.parent / "models"
# load_* functions in models/ that read no user file themselves (they take the tensors of one that was read)
NOT_FILE_LOADERS = {"load_config_safetensors"}


def _run(corpus: Path, *extra: str) -> list[dict]:
    r = subprocess.run([sys.executable, str(HERE / "run_corpus.py"), str(corpus), *extra], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


# the suffixes under which each kind of positive control is the file its loader expects
NATURAL = {"legit-torch": (".pt", ".pth", ".bin", ".ckpt"), "legit-safetensors": (".safetensors",),
           "legit-nvidia": (".pkl",)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("hostile")
    r = subprocess.run([sys.executable, str(HERE / "corpus.py"), str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "corpus.json").read_text())


@pytest.fixture(scope="module")
def results(corpus) -> list[dict]:
    rows = _run(corpus[0])
    end = rows.pop()
    assert end["outcome"] == "end" and not end["code_ran"], "a payload ran after its load returned (the sentinel)"
    return rows


def _natural(row: dict) -> bool:
    return any(row["case"].startswith(k) and row["suffix"] in v for k, v in NATURAL.items())


def _show(rows: list[dict], n: int = 15) -> str:
    return "\n".join(f"  {r['loader']} <- {r['file']}: {r['outcome']} {r.get('type', '')} {r.get('message', '')[:160]}"
                     for r in rows[:n]) + (f"\n  … and {len(rows) - n} more" if len(rows) > n else "")


def test_the_corpus_is_live(corpus):
    """Control: read the unsafe way (pickle.load, torch.load(weights_only=False)) the payload files do run code, so
    the sentinel staying absent below means the loaders refused them, not that the payloads were duds."""
    rows = _run(corpus[0], "--control")[:-1]  # (the last row is the end-of-run check)
    assert len(rows) == len(corpus[1]["live"]) >= 70
    dead = [r for r in rows if not r["code_ran"]]
    assert not dead, "payloads that did not run even when read unsafely:\n" + _show(dead)


def test_every_loader_in_models_is_registered_and_run(results):
    defined = set()
    for path in MODELS.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.FunctionDef) and node.name.startswith("load_")
                    and node.name not in NOT_FILE_LOADERS):
                decorated = any("user_file_loader" in ast.unparse(d) for d in node.decorator_list)
                raw = node.name in {fn.__name__ for fn, _ in ck.RAW_READERS.values()}
                defined.add(node.name)
                assert decorated or raw, (f"models/{path.name}: {node.name} reads a file but is not declared with "
                                          "@checkpoints.user_file_loader (so the hostile-file corpus skips it)")
    loaders = ck.registered_loaders()
    run = {r["loader"] for r in results}
    assert run == set(loaders) | {f"raw {what}" for what in ck.RAW_READERS}
    registered = {loader.function.rsplit(".", 1)[-1] for loader in loaders.values()}
    assert defined - {fn.__name__ for fn, _ in ck.RAW_READERS.values()} == registered
    # every file under every suffix each loader accepts
    for loader in loaders.values():
        assert {r["suffix"] for r in results if r["loader"] == loader.what} == set(loader.suffixes)


def test_nothing_runs_crashes_or_hangs(results, corpus):
    manifest = corpus[1]
    per_file = (sum(len(x.suffixes) for x in ck.registered_loaders().values())
                + sum(len(s) for _, s in ck.RAW_READERS.values()))
    assert len(results) == len(manifest["cases"]) * per_file
    ran = [r for r in results if r["code_ran"]]
    assert not ran, "code ran:\n" + _show(ran)
    broken = [r for r in results if r["outcome"] not in ("refused", "loaded")]
    assert not broken, "crashed, hung, or raised a raw error:\n" + _show(broken)
    loaded = [r for r in results if r["outcome"] == "loaded" and not (r["may_load"] and _natural(r) or (
              r["may_load"] and r["case"].startswith("nvidia-")))
              and not (r["loader"].startswith("raw ") and r["case"] in manifest["well_formed"])]
    assert not loaded, "hostile files that loaded:\n" + _show(loaded)
    # the files that may load (a real network whose record, or TF network, carries code) do load, without running it
    for case in ("nvidia-module-src-runs-code", "nvidia-tf-build-src-runs-code"):
        assert {(r["loader"], r["outcome"]) for r in results
                if r["case"] == case and r["may_load"] and r["suffix"] == ".pkl"} == {
            ("StyleGAN generator", "loaded"), ("raw NVIDIA pickle", "loaded")}, case


def test_every_refusal_names_the_file_and_says_why(results):
    refused = [r for r in results if r["outcome"] == "refused"]
    unnamed = [r for r in refused if r["file"] not in r["message"]]
    assert not unnamed, "refusals that do not name the file:\n" + _show(unnamed)
    terse = [r for r in refused if len(r["message"]) < len(r["file"]) + 25]
    assert not terse, "refusals that do not say why:\n" + _show(terse)


def test_code_carrying_files_are_refused_as_such(results):
    """A payload in the format its reader reads (a pickle read as an NVIDIA pickle, a torch.save file read as torch
    weights) is refused for what it is (UnsafePickleError: 'refused to load'), not as an unreadable file."""
    torch_suffixes = (".pt", ".pth", ".bin", ".ckpt")
    rows = [r for r in results
            if (r["case"].startswith(("pickle-", "nvidia-payload")) and r["suffix"] == ".pkl"
                and not r["case"].startswith(("pickle-deep", "pickle-long", "pickle-huge")))
            or (r["case"] in ("torch-zip-payload", "torch-zip-eval-payload", "torch-legacy-payload",
                              "torch-legacy-payload-in-sys-info") and r["suffix"] in torch_suffixes)]
    assert len(rows) > 150
    vague = [r for r in rows if "refused to load" not in r["message"] or r["type"] not in (
        "UnsafePickleError", "CheckpointError")]
    assert not vague, "payloads refused without saying so:\n" + _show(vague)
    # a plain pickle (no torch magic number) offered as torch weights is refused before torch reads it
    plain = [r for r in results if r["case"].startswith("pickle-") and r["case"].endswith(("-p2", "-p4"))
             and r["suffix"] in torch_suffixes]
    assert plain and all("plain pickle, not a file written by torch.save" in r["message"] for r in plain)


def test_structural_lies_are_refused_before_reading(results):
    """Trailing data, second streams, duplicate entries, polyglots, compressed entries and lying safetensors headers
    are each caught by a check of ours, with its own reason (not whatever the library happened to raise)."""
    expect = {
        "pickle-harmless-then-payload": "follow the pickle",
        "nvidia-network-then-payload": "follow the pickle",
        "torch-zip-second-pickle": "entries torch.save never writes",
        "torch-zip-two-roots": "entries torch.save never writes",
        "torchscript-archive": "TorchScript archive",
        "torch-zip-duplicate-data-pkl": "more than once",
        "torch-zip-data-pkl-then-payload": "follow the pickle in data.pkl",
        "torch-zip-bomb": "compressed entries",
        "torch-legacy-then-payload": "follow what torch reads",
        "polyglot-pickle-then-zip": "polyglot",
        "polyglot-zip-then-pickle": "appended",
        "polyglot-safetensors-then-pickle": "data appended",
        "safetensors-length-past-end": "header claims",
        "safetensors-length-2e63": "header claims",
        "safetensors-offsets-past-end": "needs 16 bytes",
        "safetensors-overlap": "overlaps",
        "safetensors-gap": "gap",
        "safetensors-huge-shape": "needs",
        "safetensors-negative-dim": "non-negative integers",
        "safetensors-float-dim": "non-negative integers",
        "safetensors-unknown-dtype": "unknown dtype",
        "safetensors-bad-utf8": "UTF-8 JSON",
        "safetensors-bad-json": "UTF-8 JSON",
        "safetensors-deep-json": "UTF-8 JSON",
        "safetensors-duplicate-keys": "duplicate keys",
        "safetensors-metadata-not-strings": "__metadata__",
    }
    suffix_of = {"pickle": (".pkl",), "nvidia": (".pkl",), "torch": (".pt", ".pth", ".bin", ".ckpt"),
                 "polyglot-pickle": (".pt",), "polyglot-zip": (".pt",), "polyglot-safetensors": (".safetensors",),
                 "safetensors": (".safetensors",)}
    wrong = []
    for case, reason in expect.items():
        key = max((k for k in suffix_of if case.startswith(k)), key=len)
        rows = [r for r in results if r["case"] == case and r["suffix"] in suffix_of[key]]
        assert rows, case
        wrong += [r for r in rows if reason not in r["message"]]
    # a config that lies about the architecture's size: refused by shapes, before the model is allocated
    config_lies = {"dit": "DiT", "stylegan": "StyleGAN generator", "vit_controlnet": "ViT ControlNet",
                   "style_mapper": "style mapper", "clip": "CLIP", "importance_scorer": "importance scorer",
                   "film_unet": "FiLM UNet"}
    for fmt, loader in config_lies.items():
        rows = [r for r in results if r["case"] == f"safetensors-config-lies-{fmt}" and r["loader"] == loader
                and r["suffix"] == ".safetensors"]
        assert len(rows) == 1, fmt
        wrong += [r for r in rows if "do not fit the architecture" not in r["message"]]
    assert not wrong, "refused for another reason than the file's lie:\n" + _show(wrong, 30)


def test_the_run_is_quick_per_file(results):
    """A refusal takes no more than seconds (the size checks come before any allocation)."""
    slow = sorted((r for r in results if r.get("seconds", 0) > 20), key=lambda r: -r["seconds"])
    assert not slow, _show(slow)


def test_legitimate_files_still_load(results, corpus):
    """Positive controls: real files in layouts torch, safetensors and NVIDIA write (no CRCs, a zip comment, torch
    1.x's archive layout, legacy files at protocol 2 and 4, empty tensors, complex and fp8 dtypes) pass every check."""
    must = [r for r in results if r["must_load"] and _natural(r)]
    assert {r["case"] for r in must} == set(corpus[1]["must_load"])
    refused = [r for r in must if r["outcome"] != "loaded"]
    assert not refused, "legitimate files refused:\n" + _show(refused)


def test_architectures_beyond_any_real_network_are_refused_by_size(results):
    rows = [r for r in results if r["case"].startswith("safetensors-config-huge") and r["suffix"] == ".safetensors"
            and not r["loader"].startswith("raw ")]
    assert rows
    for case, loader, why in (("safetensors-config-huge-stylegan", "StyleGAN generator", "is implausible"),
                              ("safetensors-config-huge-dit", "DiT", "is implausible"),
                              ("safetensors-config-huge-var", "VAR transformer", "is implausible"),
                              ("safetensors-config-huge-var-scales", "VAR transformer", "tokens in all")):
        [row] = [r for r in rows if r["case"] == case and r["loader"] == loader]
        assert why in row["message"], row
        assert row["seconds"] < 5, row  # refused before anything is built


def test_security_md_lists_every_loader_and_its_file_types():
    text = (HERE.parent.parent / "SECURITY.md").read_text()
    for loader in ck.registered_loaders().values():
        row = next((line for line in text.splitlines() if line.startswith(f"| {loader.what} (")), None)
        assert row, f"SECURITY.md has no row for the {loader.what} loader"
        for suffix in loader.suffixes:
            assert f"`{suffix}`" in row, f"SECURITY.md: the {loader.what} row does not list {suffix}"
    for fn, _ in ck.RAW_READERS.values():
        assert f"`{fn.__name__}`" in text
