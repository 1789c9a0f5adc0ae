"""Our DiT MODEL driven by stock ComfyUI nodes on the real server: KSampler, SamplerCustomAdvanced,
DifferentialDiffusion and SetLatentNoiseMask, results read back from the .latent files SaveLatent writes."""
import pytest
import torch
from safetensors.torch import load_file

from diffugan.models import dit
from devkit.random_weights import perturb

CKPT = "tiny-dit-e2e.safetensors"


@pytest.fixture(scope="module")
def dit_file(server):
    torch.manual_seed(0)
    m = perturb(dit.DiT(dit.DiTConfig(depth=2, hidden_size=96, num_heads=3, patch_size=2, num_classes=10,
                                      input_size=8)))
    folder = server.base / "models" / "dit"
    folder.mkdir(parents=True, exist_ok=True)
    dit.save_dit_safetensors(m, folder / CKPT)
    return m


def _latents(server, run, node):
    assert run.ok, run.error()
    [entry] = run.history["outputs"][node]["latents"]
    return load_file(str(server.base / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def _common():
    return {
        "1": {"class_type": "DiffuGANDiTLoader", "inputs": {"ckpt_name": CKPT, "num_heads": 0}},
        "2": {"class_type": "DiffuGANDiTConditioning", "inputs": {"class_label": 3}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 2}},
    }


def test_stock_ksampler_with_differential_diffusion_and_noise_mask(server, dit_file):
    prompt = _common() | {
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 96, "height": 64}},
        "5": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["3", 0], "mask": ["4", 0]}},
        "6": {"class_type": "DifferentialDiffusion", "inputs": {"model": ["1", 0], "strength": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "positive": ["2", 0], "negative": ["2", 1],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 4, "cfg": 3.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "latents/dit_ksampler"}},
    }
    run = server.run_prompt(prompt)
    out = _latents(server, run, "8")
    assert out.shape == (2, 4, 8, 12) and torch.isfinite(out).all()
    progress = [e["data"] for e in run.events if e["type"] == "progress" and e["data"]["node"] == "7"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 4  # per-step progress over /ws


def test_sampler_custom_advanced_runs_our_model(server, dit_file):
    prompt = _common() | {
        "4": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1],
                                                    "cfg": 2.5}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "6": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 5,
                                                         "denoise": 1.0}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
        "8": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["4", 0],
                                                                "sampler": ["5", 0], "sigmas": ["6", 0],
                                                                "latent_image": ["3", 0]}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "latents/dit_custom"}},
    }
    out = _latents(server, server.run_prompt(prompt), "9")
    assert out.shape == (2, 4, 8, 12) and torch.isfinite(out).all()


def test_region_refine_node_and_region_sampler_on_the_server(server, dit_file):
    prompt = _common() | {
        "4": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 96, "height": 64}},
        "5": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "6": {"class_type": "MaskComposite", "inputs": {"destination": ["4", 0], "source": ["5", 0], "x": 32, "y": 16,
                                                        "operation": "add"}},
        "7": {"class_type": "DiffuGANDiTRefineAdvanced", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent": ["3", 0], "seed": 3,
            "max_steps": 6, "strength": 1.0, "cfg": 3.0, "scheduler": "normal", "importance": ["6", 0],
            "min_steps": 1, "border": 0, "dense_every": 0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "latents/dit_refine"}},
        "9": {"class_type": "DiffuGANRegionSampler", "inputs": {"importance": ["6", 0], "min_steps": 1, "border": 0,
                                                                "dense_every": 0}},
        "10": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1],
                                                     "cfg": 3.0}},
        "11": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 6,
                                                          "denoise": 1.0}},
        "12": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["12", 0], "guider": ["10", 0],
                                                                 "sampler": ["9", 0], "sigmas": ["11", 0],
                                                                 "latent_image": ["3", 0]}},
        "14": {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "latents/dit_region"}},
    }
    run = server.run_prompt(prompt)
    refined, custom = _latents(server, run, "8"), _latents(server, run, "14")
    assert refined.shape == (2, 4, 8, 12) and torch.isfinite(refined).all()
    torch.testing.assert_close(refined, custom, rtol=0, atol=0)  # the one-node Refine = the SAMPLER route
    progress = [e["data"] for e in run.events if e["type"] == "progress" and e["data"]["node"] == "7"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6
