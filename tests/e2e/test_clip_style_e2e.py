"""The shipped style-mixing workflow on the real ComfyUI server with the zoo's trained CLIP and StyleGAN: two
unprompted StyleGAN drafts, the fine styles of the second mixed into the first, CLIP Style Loader -> Style Encode
(prompt + negative) -> CLIP-guided Style Inject of the mixed drafts."""
import json

import pytest
import torch

from devkit.harness import ROOT, read_images, save_artifact
from diffugan.models import clip_style as cs

WORKFLOW = json.loads((ROOT / "example_workflows" / "api" / "stylegan_style_mixing.json").read_text())


@pytest.fixture(scope="module")
def models():
    return cs.load_clip(ROOT / "zoo" / "clip_style" / WORKFLOW["1"]["inputs"]["ckpt_name"])


def test_style_workflow_steers_drafts_toward_the_prompt(server, models):
    run = server.run_prompt(WORKFLOW)
    assert run.ok, run.error()
    drafts, styled, mixed = run.output_images("6"), run.output_images("11"), run.output_images("10")
    assert len(drafts) == len(styled) == len(mixed) == 2
    target = cs.fuse(torch.cat([models.encode_texts([WORKFLOW["2"]["inputs"]["text"]]).detach()]), [1.0],
                     models.encode_texts([WORKFLOW["2"]["inputs"]["negative"]]).detach(), [0.5])
    with torch.no_grad():
        before = models.encode_images(read_images(mixed)) @ target  # Style Inject starts from the mixed drafts
        after = models.encode_images(read_images(styled)) @ target
    assert (after > before).all(), (before, after)  # read back from the saved 8-bit PNGs
    save_artifact(styled[0], "e2e_style_injected.png")
    progress = [e["data"] for e in run.events if e["type"] == "progress" and e["data"]["node"] == "5"]
    assert any(p["value"] == p["max"] == 20 * 2 for p in progress), progress[-3:]  # steps x images


def test_missing_mapper_and_clip_files_name_their_folders(server, models):
    prompt = json.loads(json.dumps(WORKFLOW))
    prompt["5"]["inputs"].update(mode="mapper", mapper="watercolor.safetensors")
    prompt["1"]["inputs"]["ckpt_name"] = "ViT-B-32.safetensors"
    run = server.run_prompt(prompt)
    assert not run.ok
    assert ("style mapper 'watercolor.safetensors' not found. Put it in the 'diffugan_mappers' model folder"
            in run.error())
    assert "CLIP checkpoint 'ViT-B-32.safetensors' not found. Put it in the 'clip_style' model folder" in run.error()
    assert "open_clip_pytorch_model.bin" in run.error()  # says which files belong there
