"""The ViT ControlNet on the real server: LoadImage -> stock Canny -> ControlNet Apply (with an importance map and
a token budget) -> stock KSampler on our DiT; strength 0 equals no ControlNet."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffugan.models import dit
from diffugan.models import vit_controlnet as vc
from devkit.random_weights import perturb

CKPT, CN = "tiny-dit-cn-e2e.safetensors", "tiny-cn-e2e.safetensors"


@pytest.fixture(scope="module")
def files(server):
    torch.manual_seed(0)
    m = dit.DiT(dit.DiTConfig(depth=3, hidden_size=64, num_heads=4, patch_size=2, num_classes=10, input_size=8))
    net = vc.ViTControlNet.from_dit(m, depth=2)
    perturb(m)
    perturb(net)
    (server.base / "models" / "dit").mkdir(parents=True, exist_ok=True)
    (server.base / "models" / "diffugan_controlnet").mkdir(parents=True, exist_ok=True)
    dit.save_dit_safetensors(m, server.base / "models" / "dit" / CKPT)
    vc.save_controlnet(net, server.base / "models" / "diffugan_controlnet" / CN)
    img = np.zeros((64, 96, 3), np.uint8)
    img[16:48, 32:64] = 255
    Image.fromarray(img).save(server.base / "input" / "cn_square.png")


def _ksampler(model, node_save, prefix):
    return {
        f"{node_save}k": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["3", 0], "seed": 1,
            "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        node_save: {"class_type": "SaveLatent", "inputs": {"samples": [f"{node_save}k", 0],
                                                           "filename_prefix": f"latents/{prefix}"}},
    }


def _apply(strength, budget, **extra):
    return {"class_type": "DiffuGANControlNetApplyAdvanced", "inputs": {
        "model": ["1", 0], "controlnet": ["4", 0], "image": ["6", 0], "strength": strength, "budget": budget,
        "importance": ["7", 0], "importance_modulation": 0.5, "edge_priority": 0.5, "edge_gain": 0.0,
        "over_steps": "every step", "reuse_n": 2, "rotation_top_share": 0.0} | extra}


def _latent(server, run, node):
    [entry] = run.history["outputs"][node]["latents"]
    return load_file(str(server.base / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def test_controlnet_with_stock_canny_on_the_server(server, files):
    prompt = {
        "1": {"class_type": "DiffuGANDiTLoader", "inputs": {"ckpt_name": CKPT, "num_heads": 0}},
        "2": {"class_type": "DiffuGANDiTConditioning", "inputs": {"class_label": 3}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 2}},
        "4": {"class_type": "DiffuGANControlNetLoader", "inputs": {"controlnet_name": CN}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "cn_square.png"}},
        "6": {"class_type": "Canny", "inputs": {"image": ["5", 0], "low_threshold": 0.2, "high_threshold": 0.6}},
        "7": {"class_type": "DiffuGANImportanceAnalytic", "inputs": {"image": ["5", 0], "smoothing": 1.0}},
        "8": _apply(1.0, 0.25),
        "9": _apply(0.0, 0.25),
        "10": _apply(1.0, 0.25, over_steps="reuse every n steps", reuse_n=2),
    }
    prompt |= _ksampler(["1", 0], "20", "plain") | _ksampler(["8", 0], "21", "cn") | _ksampler(["9", 0], "22", "zero")
    prompt |= _ksampler(["10", 0], "23", "reuse")
    run = server.run_prompt(prompt)
    assert run.ok, run.error()
    plain, cn, zero, reuse = (_latent(server, run, n) for n in ("20", "21", "22", "23"))
    assert cn.shape == (2, 4, 8, 12) and torch.isfinite(cn).all()
    assert torch.equal(zero, plain)
    assert (cn - plain).abs().max() > 1e-3
    assert torch.isfinite(reuse).all() and not torch.equal(reuse, cn)  # branch reused at step 1 of 3


def test_controlnet_for_another_dit_is_refused_on_the_server(server, files):
    torch.manual_seed(1)
    other = dit.DiT(dit.DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, num_classes=10, input_size=8))
    dit.save_dit_safetensors(other, server.base / "models" / "dit" / "other-cn-e2e.safetensors")
    prompt = {
        "1": {"class_type": "DiffuGANDiTLoader", "inputs": {"ckpt_name": "other-cn-e2e.safetensors", "num_heads": 0}},
        "4": {"class_type": "DiffuGANControlNetLoader", "inputs": {"controlnet_name": CN}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "cn_square.png"}},
        "8": {"class_type": "DiffuGANControlNetApply", "inputs": {
            "model": ["1", 0], "controlnet": ["4", 0], "image": ["5", 0], "strength": 1.0, "budget": 1.0}},
        "9": {"class_type": "DiffuGANDiTConditioning", "inputs": {"class_label": 3}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "11": {"class_type": "KSampler", "inputs": {
            "model": ["8", 0], "positive": ["9", 0], "negative": ["9", 1], "latent_image": ["10", 0], "seed": 1,
            "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "latents/other"}},
    }
    run = server.run_prompt(prompt)
    assert not run.ok
    assert "this ControlNet was made for another DiT (ControlNet vs DiT: hidden size 64 vs 32" in run.error()
