"""Long runs, interrupts and bad prompts in one real ComfyUI server (the session's), as users run it for days.

- bad prompts (execution errors from bad inputs) leave the server serving the next prompt;
- /interrupt during a long DiT refine, a long CLIP-guided style injection and a large StyleGAN batch returns within
  one step of that node (at most the step under way completes), and the next prompt runs;
- soak: 100 prompts of the full coarse-to-fine pipeline (the shipped hybrid workflow, a new seed each time) in a
  server of its own, with its resident memory, open files, descriptors and threads sampled after every prompt: memory
  grows under 5 % after the warm-up at the rate it grows per prompt (a leak's rate; one-off steps of the allocator
  are not a leak), open files, non-socket descriptors and threads not at all, sockets stay a handful.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import statistics
import time
import uuid

import psutil
import pytest
import requests

from devkit.harness import ROOT, ComfyServer

HYBRID = json.loads((ROOT / "example_workflows" / "api" / "text_to_image_hybrid.json").read_text())
SOAK_PROMPTS, WARMUP = 100, 10


def _hybrid(seed: int, max_steps: int = 6) -> dict:
    p = copy.deepcopy(HYBRID)
    p["4"]["inputs"]["seed"] = seed
    p["12"]["inputs"].update(seed=seed, max_steps=max_steps)
    return p


def test_bad_prompts_leave_the_server_serving(server):
    bad = copy.deepcopy(HYBRID)
    bad["18"]["inputs"]["points"] = "[{"  # the emphasis points are not JSON
    run = server.run_prompt(bad)
    assert not run.ok and "'points' is not valid JSON" in run.error(), run.error()
    odd = copy.deepcopy(HYBRID)
    odd["5"]["inputs"].update(width=72, height=104)  # a draft size the DiT's patches do not tile
    odd["4"]["inputs"]["seed"] = 11
    run = server.run_prompt(odd)
    assert not run.ok and "'latent' is 13x9 (104x72 px)" in run.error(), run.error()
    run = server.run_prompt(_hybrid(12))
    assert run.ok, run.error()


def _interrupt_during(server, prompt: dict, node: str, after_steps: int = 2, timeout: float = 600.0) -> dict:
    """Queue `prompt`, wait until `node` reported `after_steps` progress steps, POST /interrupt; returns the seconds
    from the interrupt to the execution_interrupted message and the node's median seconds per step."""
    import websocket

    client = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client}", timeout=timeout)
    try:
        r = requests.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client}, timeout=30)
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        steps, interrupted_at, after, deadline = [], None, 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = ws.recv()
            if isinstance(raw, bytes):
                continue
            msg, now = json.loads(raw), time.monotonic()
            data = msg.get("data", {})
            if msg["type"] == "progress" and data.get("node") == node and data.get("prompt_id") == prompt_id:
                steps.append(now)
                if interrupted_at is not None:
                    after += 1
                if len(steps) == after_steps and interrupted_at is None:
                    requests.post(server.url + "/interrupt", json={}, timeout=30)
                    interrupted_at = time.monotonic()
            if data.get("prompt_id") != prompt_id:
                continue
            if msg["type"] == "execution_interrupted":
                assert interrupted_at is not None, "interrupted before the test asked"
                gaps = [b - a for a, b in zip(steps, steps[1:])]
                return {"seconds": now - interrupted_at, "step_seconds": statistics.median(gaps), "steps": len(steps),
                        "steps_after_interrupt": after, "node": data.get("node_id")}
            if msg["type"] in ("execution_success", "execution_error"):
                pytest.fail(f"{msg['type']} instead of an interrupt ({len(steps)} steps seen): {data}")
        pytest.fail(f"no interrupt within {timeout}s:\n{server.log_tail()}")
    finally:
        ws.close()


def test_interrupt_returns_within_a_step_and_the_next_prompt_runs(server):
    long_refine = _hybrid(21, max_steps=400)
    inject = {
        "1": {"class_type": "DiffuGANCLIPLoader", "inputs": {"ckpt_name": "diffugan-emoji-clip.safetensors",
                                                             "architecture": "auto"}},
        "2": {"class_type": "DiffuGANStyleEncode", "inputs": {"clip": ["1", 0], "text": "red heart",
                                                              "image_weight": 1.0, "negative": "",
                                                              "negative_weight": 0.5}},
        "3": {"class_type": "DiffuGANStyleGANLoader", "inputs": {"ckpt_name": "diffugan-emoji-stylegan.safetensors"}},
        "4": {"class_type": "DiffuGANStyleGANGenerate",
              "inputs": {"stylegan": ["3", 0], "seed": 5, "batch_size": 4, "truncation_psi": 0.7,
                         "truncation_cutoff": 0, "noise_mode": "const", "class_label": 0}},
        "5": {"class_type": "DiffuGANStyleInjectAdvanced",
              "inputs": {"stylegan": ["3", 0], "w": ["4", 1], "style": ["2", 0], "mode": "clip_guided",
                         "strength": 1.0, "clip": ["1", 0], "mapper": "none", "steps": 500, "learning_rate": 0.05,
                         "tether": 1.0, "noise_mode": "const", "noise_seed": 0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    big_batch = {
        "3": inject["3"],
        "4": {"class_type": "DiffuGANStyleGANGenerate",
              "inputs": {"stylegan": ["3", 0], "seed": 6, "batch_size": 64, "truncation_psi": 0.7,
                         "truncation_cutoff": 0, "noise_mode": "const", "class_label": 0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    results = {
        "DiT refine (400 steps)": _interrupt_during(server, long_refine, "12"),
        "CLIP-guided style injection (500 steps)": _interrupt_during(server, inject, "5"),
        "StyleGAN batch of 64": _interrupt_during(server, big_batch, "4"),
    }
    print(json.dumps(results, indent=1))
    for what, r in results.items():
        # within one step: at most the step under way when the interrupt came is finished (counted, so a loaded
        # machine's slower steps do not matter), and never more than 10 s
        assert r["steps_after_interrupt"] <= 1 and r["seconds"] < 10, (what, r)
    run = server.run_prompt(_hybrid(22))
    assert run.ok, run.error()


def _descriptors(pid: int) -> tuple[int, int]:
    """(sockets, all other descriptors) the process holds. Sockets carry the test's own HTTP and websocket
    connections, which come and go as keep-alive decides; the others (files, pipes, event fds) are what a leak grows."""
    sockets = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed between the listing and the read
            continue
        sockets += target.startswith("socket:")
        other += not target.startswith("socket:")
    return sockets, other


@pytest.fixture
def fresh_server(tmp_path):
    """A server that has run nothing yet, so what the soak measures is its own prompts, whatever ran before it.
    On the session's server, after every earlier e2e test, the soak's resident size moved back and forth between
    plateaus (1,350-1,460 MiB) and its per-prompt growth over its 90 prompts after the warm-up read 0.30 MiB; on
    fresh servers 0.05-0.10 MiB. Most of that is ComfyUI's own history, which keeps every prompt and its outputs
    (the last 10,000): over 200 prompts on a fresh server the growth read 0.045 MiB a prompt, and 0.009 with the
    history cleared after each (POST /history {"clear": true}); this test's prompt takes about 24 KiB as Python
    objects."""
    srv = ComfyServer(tmp_path / "comfy_soak")
    yield srv
    srv.stop()


def test_soak_memory_files_and_threads_stay_flat(fresh_server):
    server = fresh_server
    proc = psutil.Process(server.proc.pid)
    samples = []
    for i in range(SOAK_PROMPTS):
        run = server.run_prompt(_hybrid(1000 + i))
        assert run.ok, f"prompt {i}: {run.error()}"
        sockets, other = _descriptors(proc.pid)
        samples.append({"rss": proc.memory_info().rss, "files": len(proc.open_files()), "fds": other,
                        "sockets": sockets, "threads": proc.num_threads()})
    after = samples[WARMUP:]
    start = statistics.median(s["rss"] for s in after[:10])
    end = statistics.median(s["rss"] for s in after[-10:])
    # A leak adds the same every prompt; the allocator instead steps up once in a while and stays (seen on a fresh
    # server on CI: 1,289-1,335 MiB for its first 21 prompts, then two of 1,351, then 1,377-1,388 but for two single
    # spikes; +6.4 % from the median of the first ten after the warm-up to that of the last ten). So the growth
    # judged is the per-prompt rate over all prompts after the warm-up (Theil-Sen: the median of the slopes between
    # every two samples, which one step barely moves) times their count: a leak that grows the RSS by 5 % over them
    # fails, as it did when end / start was judged.
    rss = [s["rss"] for s in after]
    slope = statistics.median((rss[j] - rss[i]) / (j - i) for i, j in itertools.combinations(range(len(rss)), 2))
    growth = slope * (len(after) - 1) / start
    summary = (f"RSS {start / 2**20:.0f} -> {end / 2**20:.0f} MiB ({(end / start - 1) * 100:+.2f} %), growing "
               f"{slope / 2**20:.3f} MiB per prompt ({growth * 100:+.2f} % over {len(after)}), non-socket fds "
               f"{after[0]['fds']} -> {after[-1]['fds']}, sockets {after[0]['sockets']} -> {after[-1]['sockets']} "
               f"(max {max(s['sockets'] for s in after)}), threads {after[0]['threads']} -> {after[-1]['threads']}")
    print(summary)
    assert growth < 0.05, f"{summary}; RSS after each prompt (MiB): {[s['rss'] >> 20 for s in samples]}"
    # open files, non-socket descriptors and threads: no growth from the first ten prompts after the warm-up to the
    # last ten
    for key in ("files", "fds", "threads"):
        first, last = (statistics.median(s[key] for s in part) for part in (after[:10], after[-10:]))
        assert last <= first, f"{key}: {first} -> {last}; {summary}"
    # sockets: a leaked connection per prompt would reach ~90 here; the live ones stay a handful
    assert max(s["sockets"] for s in after) <= after[0]["sockets"] + 8, summary
