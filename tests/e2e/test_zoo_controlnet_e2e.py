"""The shipped ControlNet zoo workflow on the real server, with the zoo's trained DiT, VAE and ViT ControlNet."""
import json

import numpy as np
import torch
from PIL import Image

from devkit.harness import ROOT, save_artifact
from devkit import metrics


def test_emoji_controlnet_workflow_follows_the_sketch(server):
    """The shipped ControlNet workflow with the zoo ControlNet: the refined image's edges match the sketch's edges
    better than the same graph with the ControlNet at strength 0 (which is exactly no ControlNet)."""
    from diffugan.models import vit_controlnet as vc

    workflow = json.loads((ROOT / "example_workflows" / "api" / "sketch_controlnet_refine.json").read_text())
    off = json.loads(json.dumps(workflow))
    off["10"]["inputs"]["strength"] = 0.0
    f1 = {}
    for name, prompt in (("with", workflow), ("without", off)):
        run = server.run_prompt(prompt)
        assert run.ok, run.error()
        [edges], [refined] = run.output_images("15"), run.output_images("16")
        control = torch.from_numpy(np.asarray(Image.open(edges).convert("L")) > 127).float()[None, None]
        out = torch.from_numpy(np.asarray(Image.open(refined).convert("RGB")).copy()).float().div(255)
        got = vc.canny_edges(out.permute(2, 0, 1)[None])
        f1[name] = float(metrics.edge_f1(got, control)[0])
        if name == "with":
            save_artifact(refined, "e2e_zoo_controlnet_refined.png")
    assert f1["with"] > f1["without"] + 0.05, f1
