"""Runs every registered loader (models.checkpoints.LOADERS) and raw reader (RAW_READERS) on every file of a
hostile-file corpus (corpus.py), each file under every suffix the loader accepts, each load in a fresh process.

    python tests/security/run_corpus.py CORPUS_DIR [--timeout S]   # -> JSON lines on stdout, one per load
    python tests/security/run_corpus.py CORPUS_DIR --control       # the `live` files read the unsafe way

Each load runs in a child forked from this process after the pack's model modules are imported (nothing else has
run: no torch thread pool to inherit), with its address space capped so a file that asks for terabytes gets a
MemoryError rather than the machine, and a wall-clock limit. After every load the sentinel file the payloads touch
is checked (and removed). A line says: loader, case, suffix, outcome (refused / loaded / other error / crashed /
timed out), the error's type and message, and whether the sentinel appeared.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS.parent))
import devkit  # noqa: E402,F401  (registers the pack as `diffugan`)

from diffugan.models import checkpoints as ck  # noqa: E402

MEMORY_HEADROOM = 3 << 30  # address space a load may add to the parent's


def targets() -> list[tuple[str, object, tuple[str, ...]]]:
    out = []
    for what, loader in sorted(ck.registered_loaders().items()):
        module, _, name = loader.function.rpartition(".")
        out.append((what, getattr(importlib.import_module(module), name.split(".")[-1]), loader.suffixes))
    out += [(f"raw {what}", fn, suffixes) for what, (fn, suffixes) in ck.RAW_READERS.items()]
    return out


def child(fn, path: Path, write_fd: int) -> None:
    import torch

    torch.set_num_threads(1)
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, vm + MEMORY_HEADROOM))
    try:
        fn(path)
        result = {"outcome": "loaded"}
    except ck.CheckpointError as e:
        result = {"outcome": "refused", "type": type(e).__name__, "message": str(e)[:4000]}
    except BaseException as e:  # noqa: BLE001  (what reached the user raw)
        result = {"outcome": "other error", "type": type(e).__name__, "message": str(e)[:4000]}
    os.write(write_fd, json.dumps(result).encode())
    os._exit(0)


def run_one(fn, path: Path, timeout: float) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            child(fn, path, w)
        finally:
            os._exit(3)
    os.close(w)
    os.set_blocking(r, False)
    start, status, data = time.monotonic(), None, b""
    while time.monotonic() - start < timeout:
        try:  # drain the pipe while waiting, so a long message never blocks the child
            while chunk := os.read(r, 1 << 16):
                data += chunk
        except BlockingIOError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.005)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        return {"outcome": "timed out", "seconds": timeout}
    os.set_blocking(r, True)
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    if os.WIFSIGNALED(status) or not data:
        return {"outcome": "crashed", "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
    return {**json.loads(data), "seconds": round(time.monotonic() - start, 3)}


def unsafe_read(kind: str):
    """The control: how the `live` files would be read by code that trusts them."""
    def read(path):
        import pickle

        import torch

        if kind == "torch":
            return torch.load(path, weights_only=False)
        with open(path, "rb") as f:
            return pickle.load(f)  # the control run only: proves the payload is live

    return read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--control", action="store_true", help="read the live files unsafely (proves they run code)")
    args = ap.parse_args()
    corpus = args.corpus.resolve()
    manifest = json.loads((corpus / "corpus.json").read_text())
    sentinel = Path(manifest["sentinel"])
    sys.path.insert(0, str(corpus))  # the payload module is importable: an import would really run it
    work = corpus / "runs"
    work.mkdir(exist_ok=True)
    runs = ([(f"unsafe {kind}", unsafe_read(kind), (".pkl",), [case]) for case, kind in manifest["live"].items()]
            if args.control else [(what, fn, suffixes, manifest["cases"]) for what, fn, suffixes in targets()])
    for what, fn, suffixes, cases in runs:
        for case in cases:
            for suffix in suffixes:
                path = work / f"hostile-{case}{suffix}"
                shutil.copyfile(corpus / "cases" / case, path)
                result = run_one(fn, path, args.timeout)
                if args.control:  # a payload may start a process that touches the sentinel a moment later
                    deadline = time.monotonic() + 2.0
                    while not sentinel.exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                ran = sentinel.exists()
                sentinel.unlink(missing_ok=True)
                path.unlink()
                print(json.dumps({"loader": what, "case": case, "suffix": suffix, "file": path.name,
                                  "may_load": what in manifest["may_load"].get(case, []),
                                  "must_load": what in manifest["must_load"].get(case, []), "code_ran": ran,
                                  **result}), flush=True)
    time.sleep(2.0)  # a payload that ran late (a background process) still leaves the sentinel: report it
    print(json.dumps({"loader": "(after the run)", "case": "(any)", "suffix": "", "file": "", "may_load": False,
                      "must_load": False, "code_ran": sentinel.exists(), "outcome": "end"}), flush=True)


if __name__ == "__main__":
    main()
