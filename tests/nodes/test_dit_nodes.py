"""The DiT as a stock MODEL inside the real ComfyUI: loader, conditioning, and ComfyUI's own samplers on it."""
import os
from pathlib import Path

import pytest
import torch

from diffugan.models import dit
from devkit.random_weights import perturb

CFG = dit.DiTConfig(depth=2, hidden_size=96, num_heads=3, patch_size=2, num_classes=10, input_size=8)


def _dit(seed=0):
    torch.manual_seed(seed)
    return perturb(dit.DiT(CFG).eval())


@pytest.fixture(scope="module")
def dit_file(comfy):
    import folder_paths

    folder = folder_paths.get_folder_paths("dit")[0]
    os.makedirs(folder, exist_ok=True)
    m = _dit()
    dit.save_dit_safetensors(m, os.path.join(folder, "tiny-dit.safetensors"))
    return m


@pytest.fixture(scope="module")
def model(run_node, dit_file):
    return run_node("DiffuGANDiTLoader", ckpt_name="tiny-dit.safetensors", num_heads=0).args[0]


def test_loader_gives_a_stock_model_with_dits_schedule(model):
    import comfy.latent_formats
    import comfy.model_patcher

    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    base = model.model
    assert isinstance(base.latent_format, comfy.latent_formats.SD15) and base.latent_format.scale_factor == 0.18215
    acp = torch.cumprod(1 - dit.linear_betas(), 0)
    torch.testing.assert_close(base.model_sampling.sigmas.double(), ((1 - acp) / acp).sqrt(), rtol=1e-5, atol=0)


def test_apply_model_is_the_dit_epsilon(model, dit_file):
    base = model.model
    x = torch.randn(2, 4, 8, 8)
    sigma = base.model_sampling.sigma(torch.tensor([100.0, 700.0]))
    y = torch.tensor([3, 10])  # label 3 and the null class
    denoised = base.apply_model(x, sigma, c_crossattn=torch.zeros(2, 1, 1), y=y)
    t = base.model_sampling.timestep(sigma).float()
    eps = dit_file(base.model_sampling.calculate_input(sigma, x), t, y)[:, :4]
    torch.testing.assert_close(denoised, x - eps * sigma.view(-1, 1, 1, 1), rtol=1e-5, atol=1e-5)


def _sample(comfy, model, positive, negative, cfg, seed=0, batch=1, h=8, w=8):
    latent = {"samples": torch.zeros(batch, 4, h, w)}
    return comfy.common_ksampler(model, seed, 4, cfg, "euler", "normal", positive, negative, latent)[0]["samples"]


def test_stock_ksampler_samples_our_model_with_cfg_batches_and_non_square(comfy, run_node, model):
    pos, neg = run_node("DiffuGANDiTConditioning", class_label=3).args
    out = _sample(comfy, model, pos, neg, cfg=4.0, batch=2, h=8, w=12)
    assert out.shape == (2, 4, 8, 12) and torch.isfinite(out).all()
    again = _sample(comfy, model, pos, neg, cfg=4.0, batch=2, h=8, w=12)
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # same seed, same result
    no_cfg = _sample(comfy, model, pos, neg, cfg=1.0, batch=2, h=8, w=12)
    assert not torch.allclose(out, no_cfg)  # guidance changes the result
    other = run_node("DiffuGANDiTConditioning", class_label=7).args[0]
    assert not torch.allclose(out, _sample(comfy, model, other, neg, cfg=4.0, batch=2, h=8, w=12))


def test_label_out_of_range_is_a_clear_error(comfy, run_node, model):
    pos, neg = run_node("DiffuGANDiTConditioning", class_label=10).args
    with pytest.raises(ValueError, match="DiT class label 10 is out of range: this model has 10 classes"):
        _sample(comfy, model, pos, neg, cfg=2.0)


def test_missing_file_names_the_folder(comfy, dit_file):
    msg = comfy.NODE_CLASS_MAPPINGS["DiffuGANDiTLoader"].validate_inputs(ckpt_name="DiT-XL-2-256x256.pt", num_heads=0)
    assert "DiT checkpoint 'DiT-XL-2-256x256.pt' not found. Put it in the 'dit' model folder" in msg
    assert "Download it (facebookresearch DiT-XL/2, ImageNet 256²) with: python " in msg  # the catalog's command
    assert msg.rstrip(")").endswith("https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt")
    assert "scripts/download_models.py dit-xl-2-256" in msg
    msg = comfy.NODE_CLASS_MAPPINGS["DiffuGANDiTLoader"].validate_inputs(ckpt_name="my-own-dit.pt", num_heads=0)
    assert "not found. Put it in the 'dit' model folder" in msg and "Download" not in msg  # nothing to promise


def test_missing_zoo_file_says_it_ships_with_the_pack(comfy, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_full_path", lambda folder, name: None)  # as if deleted
    msg = comfy.NODE_CLASS_MAPPINGS["DiffuGANDiTLoader"].validate_inputs(ckpt_name="diffugan-emoji-dit.safetensors",
                                                                         num_heads=0)
    assert "It ships with the pack in " in msg and msg.rstrip().endswith("reinstall or update the pack to get it back")


def test_conditioning_from_another_node_is_refused(comfy, model):
    text_cond = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]  # what CLIPTextEncode gives
    with pytest.raises(ValueError, match="needs its conditioning from 'DiffuGAN DiT Conditioning'"):
        _sample(comfy, model, text_cond, text_cond, cfg=2.0)


def test_style_conditioning_reaches_a_dit_trained_with_it(comfy, run_node, model):
    import folder_paths

    from diffugan.models import clip_style as cs

    cfg = dit.DiTConfig(depth=2, hidden_size=96, num_heads=3, patch_size=2, num_classes=10, input_size=8, style_dim=32)
    torch.manual_seed(1)
    styled = perturb(dit.DiT(cfg).eval())
    styled.style_clip = "DiffuGAN-CLIP-Emoji #0"  # trained on that CLIP's embeddings (recorded in the metadata)
    dit.save_dit_safetensors(styled, os.path.join(folder_paths.get_folder_paths("dit")[0], "styled-dit.safetensors"))
    styled_model = run_node("DiffuGANDiTLoader", ckpt_name="styled-dit.safetensors", num_heads=0).args[0]
    style = cs.StyleEmbedding(torch.nn.functional.normalize(torch.randn(32), dim=0), "test #0", [])
    pos, neg = run_node("DiffuGANDiTConditioning", class_label=3, style=style).args
    plain_pos, _ = run_node("DiffuGANDiTConditioning", class_label=3).args
    # the negative side carries a zero style, which the DiT reads as none, so both sides batch into one model call
    assert "dit_style" not in plain_pos[0][1] and neg[0][1]["dit_style"].abs().max() == 0
    calls = []
    hook = styled_model.model.diffusion_model.dit.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with_style = _sample(comfy, styled_model, pos, neg, cfg=3.0, batch=2)
    hook.remove()
    assert set(calls) == {4}, calls  # cond and uncond rows of both images in every call
    without = run_node("DiffuGANDiTConditioning", class_label=3).args[1]  # the negative without a style key
    torch.testing.assert_close(_sample(comfy, styled_model, pos, without, cfg=3.0, batch=2), with_style,
                               rtol=1e-4, atol=1e-3)  # latents ~15 at full noise: float rounding of other batches
    assert not torch.allclose(with_style, _sample(comfy, styled_model, plain_pos, neg, cfg=3.0, batch=2))
    with pytest.raises(ValueError, match="this DiT was not trained with style conditioning"):
        _sample(comfy, model, pos, neg, cfg=2.0)
    short = cs.StyleEmbedding(torch.ones(16) / 4, "test #0", [])
    pos16, _ = run_node("DiffuGANDiTConditioning", class_label=3, style=short).args
    with pytest.raises(ValueError, match="the style embedding has 16 dimensions but this DiT expects 32"):
        _sample(comfy, styled_model, pos16, neg, cfg=2.0)
    other = cs.StyleEmbedding(style.embedding, "DiffuGAN-CLIP-Demo #1", [])  # same size, another CLIP
    pos_other, _ = run_node("DiffuGANDiTConditioning", class_label=3, style=other).args
    with pytest.raises(ValueError, match=r"encoded by CLIP DiffuGAN-CLIP-Demo #1, but this DiT was trained on the "
                                         r"embeddings of CLIP DiffuGAN-CLIP-Emoji #0"):
        _sample(comfy, styled_model, pos_other, neg, cfg=2.0)


def test_keep_coarse_puts_the_references_coarse_content_back_and_keeps_the_images_detail(run_node):
    from diffugan.models import region

    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(2, 64, 64, 3, generator=g)  # (IMAGE layout)
    reference = region.coarse(sharp.movedim(-1, 1), 16).clamp(0, 1).movedim(1, -1)  # what a 16 px upscale shows
    refined = (sharp + 0.3).clamp(0, 1)  # the right detail, the colours drifted
    out = run_node("DiffuGANKeepCoarse", image=refined, reference=reference, coarse_px=16).args[0]
    assert out.shape == refined.shape and out.min() >= 0 and out.max() <= 1
    err = lambda x: (x - sharp).square().mean()  # noqa: E731
    assert err(out) < 0.3 * err(refined) and err(out) < 0.5 * err(reference)
    # its coarse content is the reference's, its detail the image's
    low = lambda x: region.coarse(x.movedim(-1, 1), 16)  # noqa: E731
    unclamped = region.coarse(reference.movedim(-1, 1), 16) + refined.movedim(-1, 1) - low(refined)
    torch.testing.assert_close(out.movedim(-1, 1), unclamped.clamp(0, 1))
    # one reference for a batch, of another size; a reference of another batch and a too-large scale are refused
    small = reference[:1, ::2, ::2]
    assert run_node("DiffuGANKeepCoarse", image=refined, reference=small, coarse_px=16).args[0].shape == refined.shape
    with pytest.raises(ValueError, match="'reference' has batch 3 but 'image' has batch 2"):
        run_node("DiffuGANKeepCoarse", image=refined, reference=torch.rand(3, 8, 8, 3), coarse_px=4)
    with pytest.raises(ValueError, match="'coarse_px' \\(65\\) is above the image's size 64x64"):
        run_node("DiffuGANKeepCoarse", image=refined, reference=reference, coarse_px=65)


def test_decode_refinement_puts_only_the_refiners_change_onto_the_original(run_node):
    import comfy.sd
    import comfy.utils

    zoo_vae = Path(__file__).parents[2] / "zoo" / "vae" / "diffugan-emoji-vae-256.safetensors"
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(zoo_vae)))  # the stock Load VAE's object
    g = torch.Generator().manual_seed(0)
    original = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=64, mode="bicubic",
                                               align_corners=False).clamp(0.05, 0.95).movedim(1, -1)
    start = {"samples": vae.encode(original)}
    plain = lambda z: vae.decode(z["samples"])  # noqa: E731  (what the stock VAE Decode gives)
    # a refiner that changes nothing leaves the original as it was, not its VAE round trip
    image, decoded = run_node("DiffuGANDecodeRefinement", vae=vae, refined=start, start=start, original=original).args
    torch.testing.assert_close(image, original)
    torch.testing.assert_close(decoded, plain(start))
    assert (plain(start) - original).abs().mean() > 0.01  # the round trip it spared the picture
    # a real change arrives whole: the result minus the original is decode(refined) - decode(start)
    refined = {"samples": start["samples"] + 0.3 * torch.randn(start["samples"].shape, generator=g)}
    image, decoded = run_node("DiffuGANDecodeRefinement", vae=vae, refined=refined, start=start, original=original).args
    torch.testing.assert_close(decoded, plain(refined))
    torch.testing.assert_close(image, (original + plain(refined) - plain(start)).clamp(0, 1))
    # keep_colour: only the change's luminance, the same on R, G and B (the original's hues stay)
    kept, _ = run_node("DiffuGANDecodeRefinement", vae=vae, refined=refined, start=start, original=original,
                       keep_colour=True).args
    y = ((plain(refined) - plain(start)) * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    torch.testing.assert_close(kept, (original + y).clamp(0, 1))
    # one original for a batch is used for each image; mismatched inputs are refused, naming them
    one, _ = run_node("DiffuGANDecodeRefinement", vae=vae, refined=start, start=start, original=original[:1]).args
    assert one.shape == original.shape
    # an original of another size (the draft before its ImageScale) is scaled to the decoded size
    half = run_node("DiffuGANDecodeRefinement", vae=vae, refined=start, start=start, original=original[:, ::2, ::2])
    assert half.args[0].shape == original.shape and (half.args[0] - original).abs().mean() < 0.05
    with pytest.raises(ValueError, match=r"'start' has shape \(2, 4, 4, 4\) but 'refined' \(2, 4, 8, 8\)"):
        run_node("DiffuGANDecodeRefinement", vae=vae, refined=refined, start={"samples": torch.zeros(2, 4, 4, 4)},
                 original=original)
    with pytest.raises(ValueError, match="'original' has batch 3 but 'refined' has batch 2"):
        run_node("DiffuGANDecodeRefinement", vae=vae, refined=refined, start=start, original=torch.rand(3, 64, 64, 3))
    with pytest.raises(ValueError, match="'start' is not an image LATENT"):
        run_node("DiffuGANDecodeRefinement", vae=vae, refined=refined, start={"samples": None}, original=original)
