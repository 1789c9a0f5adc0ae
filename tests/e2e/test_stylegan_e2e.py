"""A StyleGAN draft + mixing graph (a test workflow) on the real ComfyUI server, with a small generator written in
the real format."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit.harness import save_artifact
from diffugan.models import stylegan as sg

WORKFLOW = json.loads((Path(__file__).parent / "workflows" / "random_stylegan_draft.json").read_text())
CKPT = WORKFLOW["1"]["inputs"]["ckpt_name"]


@pytest.fixture(scope="module")
def generator(server):
    torch.manual_seed(0)
    cfg = sg.StyleGANConfig("stylegan2", z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                            mapping_kwargs={"num_layers": 2},
                            synthesis_kwargs={"channel_base": 1024, "channel_max": 64})
    G = sg.Generator(cfg).eval().requires_grad_(False)
    folder = server.base / "models" / "stylegan"
    folder.mkdir(parents=True, exist_ok=True)
    sg.save_stylegan_safetensors(G, folder / CKPT)
    return G


def _read(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255)


def test_stylegan_workflow_drafts_and_mixing(server, generator):
    run = server.run_prompt(WORKFLOW)
    assert run.ok, run.error()
    drafts, mixed = run.output_images("3"), run.output_images("6")
    assert len(drafts) == 4 and len(mixed) == 4
    expected = (generator(sg.z_from_seeds([42, 43, 44, 45], 32), truncation_psi=0.7) * 0.5 + 0.5).clamp(0, 1)
    for path, exp in zip(drafts, expected):
        got = _read(path)
        assert got.shape == (64, 64, 3)
        assert (got - exp.movedim(0, -1)).abs().max() <= 1 / 255 + 1e-6  # only the 8-bit PNG rounding
    assert all((_read(m) - _read(d)).abs().max() > 0.01 for m, d in zip(mixed, drafts))
    save_artifact(drafts[0], "e2e_stylegan_draft.png")
    progress = [e["data"] for e in run.events if e["type"] == "progress"]
    assert any(p["node"] == "2" and p["value"] == p["max"] == 4 for p in progress), progress


def test_missing_checkpoint_is_a_validation_error_naming_the_folder(server, generator):
    prompt = json.loads(json.dumps(WORKFLOW))
    prompt["1"]["inputs"]["ckpt_name"] = "ffhq.pkl"
    run = server.run_prompt(prompt)
    assert not run.ok
    assert "StyleGAN checkpoint 'ffhq.pkl' not found. Put it in the 'stylegan' model folder" in run.error()
