"""Test harness for the real ComfyUI: where it lives, a server started on a free loopback port, an HTTP/WS client.

Nothing here mocks ComfyUI: the server is the pinned ComfyUI installed by scripts/setup_env.sh.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
COMFY_DIR = Path(os.environ.get("DIFFUGAN_COMFYUI", ROOT / ".comfyui" / "ComfyUI"))
ARTIFACTS = Path(os.environ.get("DIFFUGAN_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def require_comfyui() -> Path:
    if not (COMFY_DIR / "main.py").is_file():
        pytest.fail(
            f"the pinned ComfyUI is not at {COMFY_DIR}; run `bash scripts/setup_env.sh` (or set DIFFUGAN_COMFYUI)",
            pytrace=False,
        )
    return COMFY_DIR


def make_base_dir(base: Path) -> Path:
    """A ComfyUI --base-directory with this pack linked in, as a user would install it."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "DiffuGAN"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    # Skip the first-run tutorial/template dialogs in the frontend.
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): ask the kernel to send it SIGTERM when the process that
    started it dies, however that dies. A script or test run killed by SIGTERM or SIGKILL skips its `finally:
    server.stop()`, and would otherwise leave ComfyUI running, holding its port, memory and CPU threads."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ComfyServer:
    """A real ComfyUI process (`main.py --cpu`) on 127.0.0.1:<free port>, with its own base directory."""

    def __init__(self, base: Path, startup_timeout: float = 300.0, port: int | None = None):
        import requests

        base = Path(base).resolve()  # ComfyUI runs in its own folder: a relative base would land there
        self.base = make_base_dir(base)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "w")
        cmd = [
            sys.executable, str(require_comfyui() / "main.py"), "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(base), "--disable-auto-launch",
            "--database-url", "sqlite:///:memory:",
        ]
        self.proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ComfyUI did not answer within {startup_timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, n: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    # --- client side -------------------------------------------------------------------------------------------
    def get(self, path: str, **kw):
        import requests

        r = requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r.json()

    def combo_options(self, node_id: str, input_name: str) -> list[str]:
        """The choices the server offers for a combo input (e.g. a loader's file list), in either /object_info form."""
        spec = self.get(f"/object_info/{node_id}")[node_id]["input"]["required"][input_name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> "PromptRun":
        """Queue an API-format prompt over HTTP, follow it over /ws, return its history entry and ws events."""
        import requests
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            r = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)
            body = r.json()
            if r.status_code != 200:
                return PromptRun(None, body, [], self)
            prompt_id = body["prompt_id"]
            node_errors = body.get("node_errors") or {}
            events, deadline = [], time.monotonic() + timeout
            while time.monotonic() < deadline:
                raw = ws.recv()
                if isinstance(raw, bytes):  # binary preview frames
                    continue
                msg = json.loads(raw)
                msg["t"] = time.monotonic()  # arrival time, for per-node timings
                events.append(msg)
                data = msg.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if msg["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
                if msg["type"] == "executing" and data.get("node") is None:
                    break
            else:
                raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")
        finally:
            ws.close()
        # ComfyUI sends execution_success before its queue writes the history entry: wait for the entry.
        history, deadline = None, time.monotonic() + 60
        while history is None and time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}").get(prompt_id)
            if history is None:
                time.sleep(0.05)
        return PromptRun(prompt_id, history, events, self, node_errors)


class PromptRun:
    """One queued prompt. ComfyUI runs the valid part of a graph and reports the invalid nodes in
    `node_errors` of the /prompt answer: a run is ok only if nothing was invalid and execution succeeded."""

    def __init__(self, prompt_id, history, events, server: ComfyServer, node_errors: dict | None = None):
        self.prompt_id, self.history, self.events, self.server = prompt_id, history, events, server
        self.node_errors = node_errors or {}

    @property
    def ok(self) -> bool:
        return (self.prompt_id is not None and not self.node_errors and self.history is not None
                and self.history["status"]["status_str"] == "success")

    def error(self) -> str:
        """The error a user would see: a validation error from /prompt or the execution error's message."""
        if self.prompt_id is None:
            return json.dumps(self.history)
        if self.node_errors:
            return json.dumps(self.node_errors)
        if self.history is None:
            return f"no history entry for prompt {self.prompt_id}:\n{self.server.log_tail()}"
        for kind, data in self.history.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return f"{data.get('node_type')}: {data.get('exception_message')}"
        return ""

    def node_seconds(self) -> dict[str, float]:
        """Wall time per executed node, from the `executing` events' arrival times."""
        marks = [(e["data"].get("node"), e["t"]) for e in self.events if e["type"] == "executing"]
        end = self.events[-1]["t"] if self.events else 0.0
        return {node: (marks[i + 1][1] if i + 1 < len(marks) else end) - t
                for i, (node, t) in enumerate(marks) if node is not None}

    def output_images(self, node_id: str) -> list[Path]:
        assert self.ok, f"prompt failed: {self.error()}\n{self.server.log_tail()}"
        out = []
        for img in self.history["outputs"][node_id]["images"]:
            folder = {"output": "output", "temp": "temp"}[img["type"]]
            out.append(self.server.base / folder / img.get("subfolder", "") / img["filename"])
        return out

    def saved_outputs(self) -> dict[str, list[Path]]:
        """The images each node saved to the output folder, in graph (node id) order; previews left out."""
        saved = {}
        for node_id in sorted(self.history["outputs"], key=int):
            if "images" not in self.history["outputs"][node_id]:  # a node showing something else (e.g. text)
                continue
            files = [f for f in self.output_images(node_id) if f.is_relative_to(self.server.base / "output")]
            if files:
                saved[node_id] = files
        return saved


def read_images(paths) -> torch.Tensor:
    """Saved images -> (N, 3, H, W) float32 RGB in 0..1."""
    import numpy as np
    import torch
    from PIL import Image

    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).astype(np.float32) / 255)
                        .permute(2, 0, 1) for p in paths])


def run_prompted_refine(server: ComfyServer, workflow: dict, text: str, outputs: tuple[str, str, str], batch: int,
                        size: int = 256):
    """Queue a zoo draft -> refine workflow with its prompt (node "2") set to `text`; check that each of its three
    save nodes (draft, level map, refined) wrote `batch` images, that drafts and refinements are `size`² RGB (the
    zoo DiT's working size), and that the refinement stays near its draft (refined, not replaced). Returns (draft
    paths, refined paths, drafts, refined), the images as (N, 3, H, W) tensors."""
    prompt = json.loads(json.dumps(workflow))
    prompt["2"]["inputs"]["text"] = text
    run = server.run_prompt(prompt)
    assert run.ok, run.error()
    drafts, levels, refined = (run.output_images(n) for n in outputs)
    assert len(drafts) == len(levels) == len(refined) == batch
    d, r = read_images(drafts), read_images(refined)
    assert d.shape == r.shape == (batch, 3, size, size)
    assert float((r - d).abs().mean()) < 0.15  # refined from the draft, not replaced
    return drafts, refined, d, r


def save_artifact(src: Path, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dst = ARTIFACTS / name
    shutil.copyfile(src, dst)
    return dst


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def open_frontend(server: ComfyServer, user_data_dir: Path, timeout: float = 120.0):
    """The real ComfyUI frontend in headless Chromium (Debian packages), with the app booted. Returns a driver."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing in CI: scripts/setup_env.sh installs them", pytrace=False)
        pytest.skip("chromium + chromium-driver not installed (scripts/setup_env.sh installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run", "--window-size=1600,1000", f"--user-data-dir={user_data_dir}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(timeout)
    driver.get(server.url + "/")
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return !!(window.app && window.app.graph && window.LiteGraph)")
    )
    return driver
