"""API-format prompts queued over HTTP to the real ComfyUI server; outputs read from /history and the disk."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from devkit.harness import save_artifact

WORKFLOW = json.loads((Path(__file__).parent / "workflows" / "importance.json").read_text())


def _write_input_with_painted_mask(server, name: str) -> None:
    """An RGBA input as the stock mask editor saves it: alpha 0 where the user painted (LoadImage MASK = 1-alpha).
    Flat green except a painted patch top-left; the workflow also clicks a point at (64, 48)."""
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 1] = 128
    alpha = np.full((64, 96), 255, np.uint8)
    alpha[4:20, 4:28] = 0  # painted emphasis
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(server.base / "input" / name)


def test_object_info_lists_pack_nodes(server):
    info = server.get("/object_info")
    node = info["DiffuGANImportancePreview"]
    assert node["category"] == "DiffuGAN/Importance"
    assert node["output"] == ["IMAGE"]
    assert info["DiffuGANImportanceAnalytic"]["output"] == ["MASK"]
    assert "DifferentialDiffusion" in info and "SamplerCustomAdvanced" in info  # the stock nodes we build on


def test_importance_workflow_runs_and_saves(server):
    _write_input_with_painted_mask(server, "example.png")
    run = server.run_prompt(WORKFLOW)
    assert run.ok, run.error()
    [path] = run.output_images("6")
    img = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    assert img.shape == (64, 96, 3)
    painted, clicked, rest = img[12, 16], img[48, 64], img[40, 20]
    assert painted[0] > 0.4 and painted[0] > painted[2], painted  # red-ish where emphasis was painted
    assert clicked[0] > 0.4 and clicked[0] > clicked[2], clicked  # and where the point was clicked
    assert rest[2] > rest[0], rest  # blue-ish on the flat rest
    save_artifact(path, "e2e_importance.png")
    [levels] = run.output_images("8")
    assert np.asarray(Image.open(levels)).shape == (64, 96, 3)
    # progress and execution reported over the websocket
    kinds = {e["type"] for e in run.events}
    assert {"execution_start", "executing", "executed"} <= kinds, kinds
    executed = [e["data"]["node"] for e in run.events if e["type"] == "executed"]
    assert "5" in executed  # the preview node reports its UI image


def test_bad_input_gives_a_clear_error_not_a_crash(server):
    prompt = json.loads(json.dumps(WORKFLOW))
    prompt["5"]["inputs"]["opacity"] = 2.0  # outside the declared range -> validation error from ComfyUI
    run = server.run_prompt(prompt)
    assert not run.ok
    assert "opacity" in run.error() and "bigger than max of 1.0" in run.error()
    assert server.get("/system_stats")  # the server survived


def test_a_killed_script_takes_its_comfyui_server_with_it(tmp_path):
    """A script that started a server (demo.py, eval_workflows.py, a test run) and is then killed outright, with no
    chance to stop the server itself, must not leave ComfyUI running: the server gets SIGTERM from the kernel when
    its parent dies (harness._die_with_parent)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from devkit.harness import ROOT

    script = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "from devkit.harness import ComfyServer; s = ComfyServer(Path(sys.argv[2])); "
              "print(s.proc.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(tmp_path / "base")],
                              stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        os.kill(server_pid, 0)  # up
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:  # gone, or a zombie not yet reaped by whoever adopted it (a container's PID 1 may never reap)
                if Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.2)
        else:
            os.kill(server_pid, signal.SIGKILL)
            raise AssertionError(f"the ComfyUI server (pid {server_pid}) outlived its killed parent by 30 s")
    finally:
        if parent.poll() is None:
            parent.kill()
