"""FiLM UNet nodes inside the real ComfyUI: a stock MODEL on SD1's schedule that the stock KSampler (ddim and others),
SetLatentNoiseMask and DifferentialDiffusion sample unchanged, styled through stock CONDITIONING."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffugan.models import film_unet as fu
from devkit.random_weights import perturb

CFG = fu.FiLMUNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                        num_heads=2, style_dim=256, groups=8)


@pytest.fixture(scope="module")
def unet_file(comfy):
    import folder_paths

    torch.manual_seed(0)
    unet = perturb(fu.FiLMUNet(CFG).eval(), 0.05)
    unet.style_clip = ""
    folder = Path(folder_paths.get_folder_paths("film_unet")[0])
    fu.save_film_unet(unet, folder / "tiny-film-unet.safetensors")
    return unet


@pytest.fixture(scope="module")
def model(run_node, unet_file):
    return run_node("DiffuGANFiLMUNetLoader", ckpt_name="tiny-film-unet.safetensors").args[0]


@pytest.fixture(scope="module")
def style(run_node):
    clip = run_node("DiffuGANCLIPLoader", ckpt_name="diffugan-emoji-clip.safetensors", architecture="auto").args[0]
    return run_node("DiffuGANStyleEncode", clip=clip, text="red heart", image_weight=1.0, negative_weight=0.5,
                    negative="").args[0]


def test_loader_gives_a_stock_model_on_sd1s_schedule(comfy, model):
    import comfy.model_base

    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    ms = model.get_model_object("model_sampling")
    ab = fu.sd1_alphas_cumprod()
    torch.testing.assert_close(ms.sigmas.float(), ((1 - ab) / ab).sqrt(), rtol=1e-5, atol=1e-6)


def test_apply_model_is_the_unets_epsilon(model, unet_file, run_node, style):
    pos, _ = run_node("DiffuGANFiLMUNetConditioning", style=style).args
    x = torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([1.5, 1.5])
    ms = model.get_model_object("model_sampling")
    t = ms.timestep(sigma)
    emb = pos[0][1]["film_style"].expand(2, -1)
    out = model.model.apply_model(x, sigma, style=emb)  # what the sampler passes after extra_conds
    eps = unet_file(ms.calculate_input(sigma, x), t, emb)
    torch.testing.assert_close(ms.calculate_denoised(sigma, eps, x), out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,scheduler", [("ddim", "ddim_uniform"), ("euler", "normal"),
                                               ("dpmpp_2m", "karras")])
def test_stock_ksampler_samples_it(comfy, run_node, model, style, sampler, scheduler):
    import nodes as comfy_nodes

    pos, neg = run_node("DiffuGANFiLMUNetConditioning", style=style).args
    latent = {"samples": torch.zeros(2, 4, 8, 12)}
    (out,) = comfy_nodes.KSampler().sample(model, 3, 6, 4.0, sampler, scheduler, pos, neg, latent, denoise=1.0)
    assert out["samples"].shape == (2, 4, 8, 12) and torch.isfinite(out["samples"]).all()
    (again,) = comfy_nodes.KSampler().sample(model, 3, 6, 4.0, sampler, scheduler, pos, neg, latent, denoise=1.0)
    torch.testing.assert_close(again["samples"], out["samples"])  # same seed, same result
    none_pos, none_neg = run_node("DiffuGANFiLMUNetConditioning").args  # no style: unconditional on both sides
    (plain,) = comfy_nodes.KSampler().sample(model, 3, 6, 4.0, sampler, scheduler, none_pos, none_neg, latent,
                                             denoise=1.0)
    assert not torch.allclose(plain["samples"], out["samples"])


def test_differential_diffusion_refines_where_the_mask_says(comfy, run_node, model, style):
    """SetLatentNoiseMask + DifferentialDiffusion (stock): where the mask is 0 the draft stays nearly untouched."""
    import nodes as comfy_nodes
    from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion

    pos, neg = run_node("DiffuGANFiLMUNetConditioning", style=style).args
    draft = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0  # the left half
    (masked,) = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": draft}, mask)
    dd = DifferentialDiffusion.execute(model)
    dd = dd.args[0] if hasattr(dd, "args") else dd[0]
    (out,) = comfy_nodes.KSampler().sample(dd, 5, 8, 3.0, "ddim", "ddim_uniform", pos, neg, masked, denoise=0.6)
    change = (out["samples"] - draft).abs().mean(dim=(0, 1))
    assert change[:, :8].mean() > 5 * change[:, 8:].mean()


def test_conditioning_from_elsewhere_and_a_foreign_style_are_refused(comfy, run_node, model):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    sd1_like = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(ValueError, match="needs its conditioning from 'DiffuGAN FiLM UNet Conditioning'"):
        comfy_nodes.KSampler().sample(model, 0, 2, 1.0, "ddim", "ddim_uniform", sd1_like, sd1_like, latent)
    from diffugan.models.clip_style import StyleEmbedding

    short = StyleEmbedding(embedding=torch.randn(64), clip="Other #1", parts=[])
    pos, neg = run_node("DiffuGANFiLMUNetConditioning", style=short).args
    with pytest.raises(ValueError, match="has 64 dimensions but this FiLM UNet expects 256"):
        comfy_nodes.KSampler().sample(model, 0, 2, 1.0, "ddim", "ddim_uniform", pos, neg, latent)


def test_missing_file_names_the_folder(run_node):
    with pytest.raises(ValueError, match="film_unet"):
        run_node("DiffuGANFiLMUNetLoader", ckpt_name="nope.safetensors")
