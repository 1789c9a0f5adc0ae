"""The coarse-to-fine graph at DiT-S/2's 256 px layout (a test workflow, not shipped: no zoo model has it) on the
real server: StyleGAN draft -> stock ImageScale / VAELoader / VAEEncode -> importance -> region-adaptive DiT Refine
-> stock VAEDecode -> Save, with small random models written in their real formats under the names it uses."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit.harness import save_artifact
from diffugan.models import dit
from diffugan.models import stylegan as sg
from devkit.random_weights import perturb
from devkit.vae_files import write_random_taesd_vae

WORKFLOW = json.loads((Path(__file__).parent / "workflows" / "random_coarse_to_fine.json").read_text())


@pytest.fixture(scope="module")
def models(server):
    models = server.base / "models"
    torch.manual_seed(0)
    cfg = sg.StyleGANConfig("stylegan2", z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                            mapping_kwargs={"num_layers": 2},
                            synthesis_kwargs={"channel_base": 1024, "channel_max": 64})
    (models / "stylegan").mkdir(parents=True, exist_ok=True)
    sg.save_stylegan_safetensors(sg.Generator(cfg), models / "stylegan" / WORKFLOW["1"]["inputs"]["ckpt_name"])
    model = perturb(dit.DiT(dit.DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=2, num_classes=1000,
                                          input_size=32)))
    (models / "dit").mkdir(parents=True, exist_ok=True)
    dit.save_dit_safetensors(model, models / "dit" / WORKFLOW["7"]["inputs"]["ckpt_name"])
    write_random_taesd_vae(models / "vae" / WORKFLOW["4"]["inputs"]["vae_name"])


def test_coarse_to_fine_workflow_runs_end_to_end(server, models):
    run = server.run_prompt(WORKFLOW)
    assert run.ok, run.error()
    [draft], [importance], [refined] = (run.output_images(n) for n in ("11", "13", "14"))
    for path in (draft, importance, refined):
        assert np.asarray(Image.open(path)).shape[:2] == (256, 256)
    save_artifact(refined, "e2e_coarse_to_fine_refined.png")
    refine = [e["data"] for e in run.events if e["type"] == "progress" and e["data"]["node"] == "9"]
    steps = WORKFLOW["9"]["inputs"]["max_steps"]
    assert refine and refine[-1]["value"] == refine[-1]["max"] == steps, refine[-2:]
