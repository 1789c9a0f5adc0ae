"""The shipped zoo workflow on the real server with the zoo's own trained VAE and DiT, found where the pack ships
them (zoo/vae, zoo/dit: registered as extra model folders, nothing copied into models/). The draft is a coarse
drawn smiley; the refined image must gain detail (high-frequency energy) and stay close to the draft. This checks
the trained models run through the stock VAE nodes and our nodes end to end, not how good the zoo DiT is (its card
and benchmarks/results/refine_zoo.json say that)."""
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from devkit.harness import ROOT, save_artifact

WORKFLOW = json.loads((ROOT / "example_workflows" / "api" / "refine_any_image.json").read_text())


def high_freq(img: np.ndarray) -> float:
    g = torch.from_numpy(img.astype(np.float32) / 255).mean(-1)[None, None]
    return float((g - F.avg_pool2d(g, 3, 1, 1, count_include_pad=False)).abs().mean())


def test_zoo_models_are_listed_by_default(server):
    info = server.get("/object_info/VAELoader")
    assert "diffugan-emoji-vae-256.safetensors" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    info = server.get("/object_info/DiffuGANDiTLoader")
    assert "diffugan-emoji-dit-256.safetensors" in json.dumps(info)


def test_emoji_refine_workflow_on_the_zoo_models(server):
    run = server.run_prompt(WORKFLOW)
    assert run.ok, run.error()
    [draft], [levels], [refined] = (run.output_images(n) for n in ("11", "13", "14"))
    d, r = np.asarray(Image.open(draft).convert("RGB")), np.asarray(Image.open(refined).convert("RGB"))
    assert d.shape == r.shape == (256, 256, 3)
    save_artifact(refined, "e2e_zoo_emoji_refined.png")
    save_artifact(levels, "e2e_zoo_emoji_levels.png")
    assert high_freq(r) > 1.2 * high_freq(d), (high_freq(r), high_freq(d))
    assert np.abs(r.astype(float) - d.astype(float)).mean() < 40  # refines the draft, does not replace it


def test_learned_importance_node_with_the_zoo_scorer(server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "diffugan_emoji_draft.png"}},
        "2": {"class_type": "DiffuGANImportanceLearned",
              "inputs": {"image": ["1", 0], "scorer_name": "diffugan-emoji-scorer.safetensors"}},
        "3": {"class_type": "DiffuGANImportancePreview", "inputs": {"image": ["1", 0], "importance": ["2", 0],
                                                                   "opacity": 1.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "DiffuGAN/zoo_learned"}},
    }
    run = server.run_prompt(prompt)
    assert run.ok, run.error()
    [heat] = run.output_images("4")
    assert np.asarray(Image.open(heat)).shape[:2] == (256, 256)
    save_artifact(heat, "e2e_zoo_learned_importance.png")

