"""VAR nodes inside the real ComfyUI: the loader reads FoundationVision-format files from models/var, Draft equals
the model's own sampler (and so the reference code, tests/models/test_var.py), stops at any scale, keeps encoded
scales, reports progress per scale and honours interrupts; bad inputs are refused naming the input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devkit import var_parity
from diffugan.models import var as vm


@pytest.fixture(scope="module")
def files(comfy):
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("var")[0])
    return var_parity.write_checkpoints(folder)


@pytest.fixture(scope="module")
def pair(run_node, files):
    return run_node("DiffuGANVARLoader", vqvae_name=files["vqvae"].name, var_name=files["var_l2"].name).args[0]


def _draft(run_node, pair, **kw):
    args = dict(var=pair, class_label=3, cfg=1.5, top_k=20, top_p=0.9, seed=42, batch_size=2, stop_scale=0)
    return run_node("DiffuGANVARDraft", **{**args, **kw}).args


def test_loader_lists_and_loads_the_pair(comfy, files, pair):
    import folder_paths

    assert {p.name for p in files.values()} <= set(folder_paths.get_filename_list("var"))
    assert pair.transformer.config.patch_nums == var_parity.PATCH_NUMS and pair.size == 64


def test_draft_is_the_models_sampler_and_stops_at_any_scale(run_node, pair, files):
    image, tokens = _draft(run_node, pair)
    assert image.shape == (2, 64, 64, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
    vq, tr = vm.load_vqvae(files["vqvae"]), vm.load_var(files["var_l2"])
    expected, maps = tr.sample(vq, torch.tensor([3, 3]), torch.Generator().manual_seed(42), 1.5, 20, 0.9)
    torch.testing.assert_close(image, expected.movedim(1, -1))
    assert all(torch.equal(a, b) for a, b in zip(tokens["indices"], maps))
    coarse, coarse_tokens = _draft(run_node, pair, stop_scale=2)
    assert coarse.shape == image.shape and len(coarse_tokens["indices"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(coarse_tokens["indices"], maps[:2]))  # same first scales
    assert not torch.allclose(coarse, image)


def test_encode_then_keep_coarse_scales(run_node, pair):
    picture = (var_parity.fixture_images() * 0.5 + 0.5).movedim(1, -1)[:1]
    tokens, recon = run_node("DiffuGANVAREncode", var=pair, image=picture).args
    assert recon.shape == (1, 64, 64, 3) and len(tokens["indices"]) == 4
    image, got = _draft(run_node, pair, tokens=tokens, keep_scales=2, batch_size=3)
    assert image.shape[0] == 3
    for k in (0, 1):
        assert torch.equal(got["indices"][k], tokens["indices"][k].expand(3, -1))
    all_kept, _ = _draft(run_node, pair, tokens=tokens, keep_scales=4, batch_size=1)
    torch.testing.assert_close(all_kept, recon)  # every scale kept: the encoded image itself
    # any picture size: resized to the pair's
    big = torch.rand(1, 100, 80, 3)
    assert [i.shape for i in run_node("DiffuGANVAREncode", var=pair, image=big).args[0]["indices"]] == [
        (1, p * p) for p in var_parity.PATCH_NUMS]


def test_progress_per_scale_and_interrupt(run_node, pair, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        seen.append((value, total)))
    _draft(run_node, pair, batch_size=1)
    assert seen == [(k, 4) for k in range(1, 5)]
    calls = []

    def stop_after_two():
        calls.append(1)
        if len(calls) > 2:
            raise mm.InterruptProcessingException()
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", stop_after_two)
    with pytest.raises(mm.InterruptProcessingException):
        _draft(run_node, pair, batch_size=1, seed=5)
    assert len(calls) == 3  # stopped at the third scale's check


def test_bad_inputs_are_refused_naming_the_input(run_node, pair, files, comfy):
    with pytest.raises(ValueError, match="class_label 10 is outside this VAR's classes 0…9"):
        _draft(run_node, pair, class_label=10)
    with pytest.raises(ValueError, match="stop_scale 5 is beyond this VAR's 4 scales"):
        _draft(run_node, pair, stop_scale=5)
    with pytest.raises(ValueError, match="'tokens' is not a VAR token set"):
        _draft(run_node, pair, tokens={"indices": "x"}, keep_scales=1)
    with pytest.raises(ValueError, match="keep_scales 5 but the tokens hold 4"):
        tokens = run_node("DiffuGANVAREncode", var=pair, image=torch.rand(1, 64, 64, 3)).args[0]
        _draft(run_node, pair, tokens=tokens, keep_scales=5)
    with pytest.raises(ValueError, match="tokens hold 2 images but batch_size is 3"):
        tokens = run_node("DiffuGANVAREncode", var=pair, image=torch.rand(2, 64, 64, 3)).args[0]
        _draft(run_node, pair, tokens=tokens, keep_scales=1, batch_size=3)
    with pytest.raises(ValueError, match="'image'"):
        run_node("DiffuGANVAREncode", var=pair, image=torch.full((1, 8, 8, 3), float("nan")))
    style_clip = run_node("DiffuGANCLIPLoader", ckpt_name="diffugan-emoji-clip.safetensors",
                          architecture="auto").args[0]
    style = run_node("DiffuGANStyleEncode", clip=style_clip, text="a cat", image_weight=1.0, negative="",
                     negative_weight=0.5).args[0]
    with pytest.raises(ValueError, match="takes class labels, not a 'style'"):
        _draft(run_node, pair, style=style)
    # a tokenizer whose codes the transformer does not predict
    other = vm.VQVAE(vm.VQVAEConfig(vocab_size=32, z_channels=8, ch=32, scales=4))
    vm.save_vqvae(other, files["vqvae"].parent / "other-vqvae.safetensors")
    with pytest.raises(ValueError, match="predicts 64 codes of width 8 but the VQVAE has 32"):
        run_node("DiffuGANVARLoader", vqvae_name="other-vqvae.safetensors", var_name=files["var_l2"].name)


def test_a_style_conditioned_zoo_var_takes_the_prompt_or_none(run_node, files, comfy):
    import folder_paths

    style_clip = run_node("DiffuGANCLIPLoader", ckpt_name="diffugan-emoji-clip.safetensors",
                          architecture="auto").args[0]
    heart, cat = (run_node("DiffuGANStyleEncode", clip=style_clip, text=t, image_weight=1.0, negative="",
                           negative_weight=0.5).args[0] for t in ("red heart", "a cat"))
    torch.manual_seed(0)
    model = vm.VAR(vm.VARConfig(depth=1, embed_dim=32, num_heads=2, num_classes=0, vocab_size=64, z_channels=8,
                                patch_nums=var_parity.PATCH_NUMS, style_dim=heart.embedding.numel()))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.style_clip = heart.clip
    vm.save_var(model, Path(folder_paths.get_folder_paths("var")[0]) / "zoo-style-var.safetensors")
    pair = run_node("DiffuGANVARLoader", vqvae_name=files["vqvae"].name, var_name="zoo-style-var.safetensors").args[0]
    a = _draft(run_node, pair, style=heart, class_label=0)[0]
    b = _draft(run_node, pair, style=cat, class_label=0)[0]
    none = _draft(run_node, pair, class_label=0)[0]  # no style: the unconditional side
    assert not torch.allclose(a, b) and not torch.allclose(a, none)
    vq = vm.load_vqvae(files["vqvae"])
    expected, _ = model.eval().sample(vq, torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(42), 1.5,
                                      20, 0.9, heart.embedding.float().view(1, -1).expand(2, -1))
    torch.testing.assert_close(a, expected.movedim(1, -1))


def test_batches_beyond_a_chunk(run_node, pair, monkeypatch):
    import comfy.utils

    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        seen.append((value, total)))
    nine, tokens = _draft(run_node, pair, batch_size=9, stop_scale=2)
    eight, _ = _draft(run_node, pair, batch_size=8, stop_scale=2)
    assert nine.shape[0] == 9 and [t.shape[0] for t in tokens["indices"]] == [9, 9]
    torch.testing.assert_close(nine[:8], eight)  # the first chunk of 8 draws as a batch of 8 does
    assert seen[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # two chunks of two scales
