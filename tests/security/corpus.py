"""The hostile-file corpus: files built to make a checkpoint loader run code, crash, hang or say something unclear.

    python tests/security/corpus.py OUT_DIR        # writes OUT_DIR/cases/<case> and OUT_DIR/corpus.json

Built fresh by the tests, never committed: every payload only touches OUT_DIR/SENTINEL (so a file that proves a
loader ran code is a file on disk, checked after every load) and a few carry a script or module that would do the
same if run or imported. Case names say what the file is. In corpus.json:
  - `may_load`: the loaders for which loading the file is correct (a real network whose NVlabs record carries code:
    the code must be dropped, the weights may load);
  - `must_load`: legitimate files (a torch zip written without CRCs, with a comment, in torch 1.x's layout; legacy
    files at pickle protocols 2 and 3; safetensors with empty tensors, metadata only, complex and fp8 dtypes; a real
    NVIDIA network): the positive controls, which the structural checks must not refuse;
  - `well_formed`: files a raw reader may return, being well-formed plain data (a valid safetensors whose metadata
    lies about the architecture: the loader behind the reader refuses it);
  - `live`: files that do run code when read the unsafe way (`pickle.load`, or `torch.load(weights_only=False)`),
    which the tests check first, so that "nothing ran" means something.
"""
from __future__ import annotations

import functools
import importlib
import tempfile
import io
import json
import os
import pickle
import runpy
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))
import devkit  # noqa: E402,F401  (registers the pack as `diffugan`)
import nvidia_pickle  # noqa: E402

from diffugan.models import stylegan as sg  # noqa: E402

PAYLOAD_MODULE = "diffugan_hostile_payload"  # importable from OUT_DIR (the runner puts it on sys.path)


class Call:
    """Pickles as `fn(*args)`: the shape of every code-running pickle. Callable itself, so a Call can be the
    function of another Call (getattr chains)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):
        raise RuntimeError("only pickled, never called here")


def payloads(out: Path) -> dict[str, object]:
    """Each way a pickle can run code, each one touching the sentinel."""
    s = str(out / "SENTINEL")
    touch = f"open({s!r}, 'w').close()"
    inner = pickle.dumps(Call(os.system, f"touch '{s}'"), protocol=2)
    return {
        "os_system": Call(os.system, f"touch '{s}'"),
        "eval": Call(eval, touch),
        "exec": Call(exec, touch),
        "subprocess_popen": Call(subprocess.Popen, ["touch", s]),
        "subprocess_call": Call(subprocess.call, ["touch", s]),
        "runpy": Call(runpy.run_path, str(out / "payload_script.py")),
        "importlib": Call(importlib.import_module, PAYLOAD_MODULE),
        "nested_pickle_loads": Call(pickle.loads, inner),
        "getattr_import": Call(Call(getattr, Call(__import__, "os"), "system"), f"touch '{s}'"),
        "torch_load_unsafe": Call(functools.partial(torch.load, str(out / "payload_legacy.pt"), weights_only=False)),
    }


def legacy_torch(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=False)
    return b.getvalue()


def zip_torch(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def rezip(data: bytes, edit, comment: bytes = b"") -> bytes:
    """A torch zip with its entries edited: `edit(list of (name, bytes))` -> list of (name, bytes[, compress])."""
    src = zipfile.ZipFile(io.BytesIO(data))
    entries = edit([(i.filename, src.read(i)) for i in src.infolist()])
    b = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(b, "w") as z:
            z.comment = comment
            for name, payload, *compress in entries:
                z.writestr(zipfile.ZipInfo(name), payload, compress_type=(compress or [zipfile.ZIP_STORED])[0])
    return b.getvalue()


def pickle_streams(data: bytes) -> list[bytes]:
    """The consecutive pickle streams at the start of `data` (a legacy torch file: magic, protocol, sys_info,
    object, storage keys), found by reading opcodes only; the rest (raw storages) as the last item."""
    import pickletools

    out, pos = [], 0
    for _ in range(5):
        for op, _, p in pickletools.genops(io.BytesIO(data[pos:])):
            if op.name == "STOP":
                out.append(data[pos:pos + p + 1])
                pos += p + 1
                break
    return out + [data[pos:]]


def safetensors_file(header: dict, data: bytes, header_len: int | None = None, raw_header: bytes | None = None):
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def small_generator():
    config = sg.StyleGANConfig("stylegan2", z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                               mapping_kwargs={"num_layers": 1},
                               synthesis_kwargs={"channel_base": 64, "channel_max": 8, "num_fp16_res": 0})
    torch.manual_seed(0)
    return sg.Generator(config).eval().requires_grad_(False)


def nvidia_bytes(G, extra=None, module_src: str | None = None) -> bytes:
    from devkit.persistence_pickle import Record

    old = Record.module_src
    if module_src is not None:
        Record.module_src = module_src
    try:
        with tempfile.TemporaryDirectory() as d:
            nvidia_pickle.write_nvidia_pickle(Path(d) / "net.pkl", G, extra=extra)
            return (Path(d) / "net.pkl").read_bytes()
    finally:
        Record.module_src = old


def tf_network_bytes(out: Path, src: str | None = None, edit=None) -> bytes:
    """A TensorFlow StyleGAN2 pickle (the TF parity fixture's small generator), optionally with code as its build
    source or an edit of its kwargs / variables."""
    from devkit import tf_stylegan_parity as tf_parity

    kw, variables, _ = tf_parity.fixture("skip")
    if edit:
        edit(kw, variables)
    path = tf_parity.tf_pickle(kw, variables, out / "tf-network.tmp", build_module_src=src)
    data = path.read_bytes()
    path.unlink()
    return data


def build(out: Path) -> dict[str, dict]:
    out = out.resolve()
    cases_dir = out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    s = str(out / "SENTINEL")
    (out / "payload_script.py").write_text(f"open({s!r}, 'w').close()\n")
    (out / f"{PAYLOAD_MODULE}.py").write_text(f"open({s!r}, 'w').close()\n")
    cases: dict[str, bytes] = {}
    may_load: dict[str, list[str]] = {}
    p = payloads(out)
    (out / "payload_legacy.pt").write_bytes(legacy_torch(Call(os.system, f"touch '{s}'")))
    weights = {"w": torch.arange(6, dtype=torch.float32)}

    # 1. every code-running pickle, at every protocol, as the whole file and inside a state dict
    for name, payload in p.items():
        for proto in range(6):
            cases[f"pickle-{name}-p{proto}"] = pickle.dumps(payload, protocol=proto)
        cases[f"pickle-{name}-in-dict"] = pickle.dumps({"G_ema": payload, **weights}, protocol=4)
    # 2. NVIDIA layout: a payload in a network record's state, in a nested storage stream; module code
    G = small_generator()
    good_pkl = nvidia_bytes(G)
    cases["nvidia-payload-in-record-state"] = nvidia_bytes(G, extra={"augment_pipe_x": p["os_system"]})
    cases["nvidia-payload-in-storage-stream"] = pickle.dumps(
        {"G_ema": Call(torch.storage._load_from_bytes, legacy_torch(p["os_system"]))}, protocol=4)
    cases["nvidia-module-src-runs-code"] = nvidia_bytes(G, module_src=f"import os\nos.system(\"touch '{s}'\")\n")
    may_load["nvidia-module-src-runs-code"] = ["StyleGAN generator", "raw NVIDIA pickle"]
    # TensorFlow-era networks (StyleGAN2 TF): the build source they carry, payloads in their variables and kwargs
    good_tf = tf_network_bytes(out)
    cases["nvidia-tf-build-src-runs-code"] = tf_network_bytes(out, src=f"import os\nos.system(\"touch '{s}'\")\n")
    may_load["nvidia-tf-build-src-runs-code"] = ["StyleGAN generator", "raw NVIDIA pickle"]
    cases["nvidia-tf-payload-in-variables"] = tf_network_bytes(out, edit=lambda kw, v: v["G"].update(
        dlatent_avg=p["os_system"]))
    cases["nvidia-tf-payload-in-kwargs"] = tf_network_bytes(out, edit=lambda kw, v: kw.update(
        resolution=p["eval"]))
    cases["nvidia-numpy-object-array"] = pickle.dumps({"G_ema": np.array([1, "x"], dtype=object)}, protocol=4)
    cases["nvidia-numpy-object-array-payload"] = pickle.dumps(
        {"G_ema": np.array([p["os_system"]], dtype=object)}, protocol=2)
    cases["pickle-harmless-then-payload"] = pickle.dumps({"G_ema": None}, protocol=4) + pickle.dumps(
        p["os_system"], protocol=4)
    cases["nvidia-network-then-payload"] = good_pkl + pickle.dumps(p["os_system"], protocol=4)
    cases["pickle-huge-bytes-claim"] = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x."
    cases["pickle-deep-nesting"] = b"\x80\x02" + b"]" * 200_000 + b"."
    cases["pickle-long-digits"] = b"L" + b"9" * 200_000 + b"L\n."
    # 3. torch zip and legacy files
    good_zip, good_legacy = zip_torch(weights), legacy_torch(weights)
    cases["torch-zip-payload"] = zip_torch({**weights, "x": p["os_system"]})
    cases["torch-zip-eval-payload"] = zip_torch({**weights, "x": p["eval"]})
    cases["torch-legacy-payload"] = legacy_torch({**weights, "x": p["os_system"]})
    cases["torch-zip-numpy-object-array"] = zip_torch({**weights, "x": np.array([1, "x"], dtype=object)})
    cases["torch-zip-second-pickle"] = rezip(good_zip, lambda es: es + [
        ("archive/extra.pkl", pickle.dumps(p["os_system"], protocol=2))])
    cases["torch-zip-duplicate-data-pkl"] = rezip(good_zip, lambda es: es + [
        ("archive/data.pkl", pickle.dumps(p["os_system"], protocol=2))])
    cases["torch-zip-data-pkl-then-payload"] = rezip(good_zip, lambda es: [
        (n, d + pickle.dumps(p["os_system"], protocol=2) if n.endswith("data.pkl") else d) for n, d in es])
    cases["torch-zip-two-roots"] = rezip(good_zip, lambda es: es + [("other/data.pkl", es[0][1])])
    jit = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), jit)
    cases["torchscript-archive"] = jit.getvalue()
    streams = pickle_streams(good_legacy)
    cases["torch-legacy-payload-in-sys-info"] = b"".join(
        streams[:2] + [pickle.dumps(p["os_system"], protocol=2)] + streams[3:])
    cases["torch-legacy-then-payload"] = good_legacy + pickle.dumps(p["os_system"], protocol=2)
    cases["torch-zip-bomb"] = rezip(good_zip, lambda es: [
        (n, d + b"\0" * (200 << 20) if n.endswith("data/0") else d, zipfile.ZIP_DEFLATED) for n, d in es])
    # 4. polyglots
    cases["polyglot-pickle-then-zip"] = pickle.dumps(p["os_system"], protocol=2) + good_zip
    cases["polyglot-zip-then-pickle"] = good_zip + pickle.dumps(p["os_system"], protocol=2)
    t = np.arange(4, dtype=np.float32).tobytes()
    st_header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "__metadata__": {"format": "x"}}
    good_st = safetensors_file(st_header, t)
    cases["polyglot-safetensors-then-pickle"] = good_st + pickle.dumps(p["os_system"], protocol=2)
    cases["polyglot-safetensors-metadata-pickle"] = safetensors_file(
        {**st_header, "__metadata__": {"config": pickle.dumps(p["os_system"], protocol=0).decode("latin1")}}, t)
    # 5. truncated and empty files
    cases["empty"] = b""
    for name, data in {"nvidia": good_pkl, "torch-zip": good_zip, "torch-legacy": good_legacy,
                       "safetensors": good_st}.items():
        for cut in sorted({4, len(data) // 2, len(data) - 30, len(data) - 1}):
            cases[f"truncated-{name}-at-{cut}"] = data[:cut]
    # 6. safetensors that lie
    w = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    lies = {
        "length-past-end": safetensors_file(st_header, t, header_len=10_000),
        "length-2e63": safetensors_file(st_header, t, header_len=1 << 63),
        "length-zero": safetensors_file(st_header, t, header_len=0),
        "offsets-past-end": safetensors_file({"w": {**w, "data_offsets": [0, 1 << 40]}}, t),
        "overlap": safetensors_file({"a": w, "b": {**w, "data_offsets": [8, 24]}}, t + t[:8]),
        "gap": safetensors_file({"a": {**w, "data_offsets": [4, 20]}}, b"\0" * 4 + t),
        "huge-shape": safetensors_file({"w": {**w, "shape": [1 << 31, 1 << 31]}}, t),
        "shape-overflows-int64": safetensors_file({"w": {**w, "shape": [1 << 62, 1 << 62, 16]}}, t),
        "negative-dim": safetensors_file({"w": {**w, "shape": [-4]}}, t),
        "float-dim": safetensors_file({"w": {**w, "shape": [4.0]}}, t),
        "unknown-dtype": safetensors_file({"w": {**w, "dtype": "Q99"}}, t),
        "object-dtype": safetensors_file({"w": {**w, "dtype": "O"}}, t),
        "bad-utf8": safetensors_file({}, t, raw_header=b'{"w\xff\xfe": 1}'),
        "bad-json": safetensors_file({}, t, raw_header=b'{"w": {"dtype": "F32", '),
        "json-list": safetensors_file({}, t, raw_header=b"[1, 2, 3]"),
        "duplicate-keys": safetensors_file({}, t, raw_header=(
            b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
            b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')),
        "metadata-not-strings": safetensors_file({**st_header, "__metadata__": {"config": {"depth": 6}}}, t),
        "missing-offsets": safetensors_file({"w": {"dtype": "F32", "shape": [4]}}, t),
        "deep-json": safetensors_file({}, t, raw_header=b"[" * 100_000 + b"]" * 100_000),
        "trailing-data": safetensors_file(st_header, t + b"\0" * 64),
    }
    cases.update({f"safetensors-{k}": v for k, v in lies.items()})
    # 7. a valid safetensors whose config metadata lies about the architecture's size (a billion-wide layer)
    big = 1 << 20
    lying = {
        "diffugan.dit.v1": {"depth": 64, "hidden_size": big, "num_heads": 16, "patch_size": 1, "input_size": 1024},
        "diffugan.vit_controlnet.v1": {"hidden_size": big, "num_heads": 16, "depth": 64, "patch_size": 1,
                                       "base_depth": 64},
        "diffugan.style_mapper.v1": {"clip_dim": big, "w_dim": big, "num_ws": 64, "hidden": big, "layers": 64},
        "diffugan.importance_scorer.v1": {"stem": big, "blocks": [[big, 1, 64, True]] * 8, "max_side": 512},
        "diffugan.stylegan.v1": {"arch": "stylegan2", "z_dim": big, "c_dim": big, "w_dim": big,
                                 "img_resolution": 1024, "img_channels": 3, "mapping_kwargs": {"num_layers": 64},
                                 "synthesis_kwargs": {"channel_base": big, "channel_max": big}},
        "diffugan.film_unet.v1": {"base_channels": big, "channel_mults": [1, 2, 4, 8], "num_res_blocks": 64,
                                  "attention_levels": [0, 1, 2, 3], "style_dim": big},
        "diffugan.var.v1": {"depth": 64, "embed_dim": big, "num_heads": 16, "vocab_size": big, "z_channels": big},
        "diffugan.var_vqvae.v1": {"vocab_size": big, "z_channels": big, "ch": big, "ch_mult": [1, 2, 4, 8]},
        "diffugan.clip.v1": None,
    }
    for fmt, config in lying.items():
        meta = ({"format": fmt, "arch": "ViT-B-32", "model_cfg": json.dumps(
                    {"embed_dim": big, "vision_cfg": {"image_size": 224, "layers": 64, "width": big, "patch_size": 1},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": big, "heads": 8,
                                  "layers": 64}})}
                if config is None else {"format": fmt, "config": json.dumps(config)})
        cases[f"safetensors-config-lies-{fmt.split('.')[1]}"] = safetensors_file({**st_header, "__metadata__": meta}, t)

    # 8. configs beyond any real network: refused by size before anything is built
    cases["safetensors-config-huge-stylegan"] = safetensors_file({**st_header, "__metadata__": {
        "format": "diffugan.stylegan.v1", "config": json.dumps(
            {"arch": "stylegan2", "z_dim": 1 << 26, "c_dim": 0, "w_dim": 1 << 26, "img_resolution": 64,
             "img_channels": 3, "mapping_kwargs": {"num_layers": 100_000}, "synthesis_kwargs": {}})}}, t)
    cases["safetensors-config-huge-dit"] = safetensors_file({**st_header, "__metadata__": {
        "format": "diffugan.dit.v1", "config": json.dumps({"depth": 10_000_000, "hidden_size": 64, "num_heads": 4})}},
        t)
    cases["safetensors-config-huge-var"] = safetensors_file({**st_header, "__metadata__": {
        "format": "diffugan.var.v1", "config": json.dumps({"depth": 20_000, "embed_dim": 8, "num_heads": 1})}}, t)
    cases["safetensors-config-huge-var-scales"] = safetensors_file({**st_header, "__metadata__": {
        "format": "diffugan.var.v1", "config": json.dumps({"depth": 1, "embed_dim": 8, "num_heads": 1,
                                                           "patch_nums": [100_000]})}}, t)

    # 9. legitimate files the raw readers must read (positive controls: the checks must not refuse real files)
    must_load: dict[str, list[str]] = {}
    import torch.utils.serialization as ts

    ts.config.save.compute_crc32 = False
    try:
        cases["legit-torch-zip-without-crc"] = zip_torch(weights)
    finally:
        ts.config.save.compute_crc32 = True
    cases["legit-torch-zip"] = good_zip
    cases["legit-torch-zip-with-comment"] = rezip(good_zip, lambda es: es, comment=b"saved by a training script")
    cases["legit-torch-zip-old-layout"] = rezip(good_zip, lambda es: [  # torch 1.6-1.x: root = file stem, fewer entries
        (n.replace("archive/", "DiT-XL-2-256x256/", 1), d) for n, d in es
        if not n.endswith((".format_version", ".storage_alignment", "byteorder", "serialization_id"))])
    for proto in (2, 3):  # (protocol 4+ legacy files: torch's own weights-only reader cannot read them)
        b = io.BytesIO()
        torch.save(weights, b, _use_new_zipfile_serialization=False, pickle_protocol=proto)
        cases[f"legit-torch-legacy-p{proto}"] = b.getvalue()
    must_load.update({c: ["raw torch weights"] for c in cases if c.startswith("legit-torch")})
    from safetensors.torch import save as st_save

    cases["legit-safetensors-empty-tensor"] = st_save({"w": torch.zeros(0, 3), "b": torch.ones(2)})
    cases["legit-safetensors-metadata-only"] = st_save({}, metadata={"format": "x"})
    cases["legit-safetensors-c64-fp8"] = st_save({"c": torch.zeros(2, dtype=torch.complex64),
                                                  "f": torch.zeros(3, dtype=torch.float8_e4m3fnuz)})
    must_load.update({c: ["raw safetensors"] for c in cases if c.startswith("legit-safetensors")})
    cases["legit-nvidia-network"] = good_pkl
    must_load["legit-nvidia-network"] = ["raw NVIDIA pickle", "StyleGAN generator"]
    cases["legit-nvidia-tf-network"] = good_tf
    must_load["legit-nvidia-tf-network"] = ["raw NVIDIA pickle", "StyleGAN generator"]
    may_load.update(must_load)

    for name, data in cases.items():
        (cases_dir / name).write_bytes(data)
    well_formed = ["pickle-deep-nesting", "polyglot-safetensors-metadata-pickle"] + [
        c for c in cases if c.startswith(("safetensors-config-lies-", "safetensors-config-huge-"))]
    live = {c: "pickle" for c in cases for n in p if c.startswith(f"pickle-{n}-")}
    live.update({"polyglot-pickle-then-zip": "pickle", "torch-zip-payload": "torch", "torch-zip-eval-payload": "torch",
                 "torch-legacy-payload": "torch", "torch-legacy-payload-in-sys-info": "torch"})
    manifest = {"cases": sorted(cases), "may_load": may_load, "must_load": must_load, "well_formed": well_formed,
                "live": live,
                "sentinel": s,
                "sizes": {n: len(d) for n, d in cases.items()}}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":
    m = build(Path(sys.argv[1]))
    print(f"{len(m['cases'])} hostile files in {sys.argv[1]}/cases")
