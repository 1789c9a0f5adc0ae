"""Region-adaptive sampling inside the real ComfyUI: identity with the stock Euler sampler, untouched regions,
CFG and batches, interrupts."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffugan.models import dit
from devkit.random_weights import perturb

CFG = dit.DiTConfig(depth=2, hidden_size=96, num_heads=3, patch_size=2, num_classes=10, input_size=8)


@pytest.fixture(scope="module")
def model(comfy):
    import sys

    torch.manual_seed(0)
    m = perturb(dit.DiT(CFG).eval())
    pack = next(mod for name, mod in sys.modules.items() if name.endswith("custom_nodes/DiffuGAN"))
    return pack.nodes.dit.dit_to_comfy_model(m)


@pytest.fixture(scope="module")
def conds(run_node):
    return run_node("DiffuGANDiTConditioning", class_label=3).args


def _sample(model, sampler, positive, negative, draft, cfg=3.0, steps=6, strength=0.7, seed=5):
    import comfy.sample
    import comfy.samplers

    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", int(steps / strength)).cpu()[-(steps + 1):]
    noise = comfy.sample.prepare_noise(draft, seed)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, draft, seed=seed)


def _region(run_node, mask, min_steps=0, border=0, dense_every=0):
    return run_node("DiffuGANRegionSampler", importance=mask, min_steps=min_steps, border=border,
                    dense_every=dense_every).args[0]


def _draft(batch=2, h=8, w=12, seed=0):
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed)) * 4


def test_uniform_map_equals_the_stock_euler_sampler(run_node, model, conds):
    import comfy.samplers

    draft = _draft()
    stock = _sample(model, comfy.samplers.sampler_object("euler"), *conds, draft)
    ours = _sample(model, _region(run_node, torch.ones(1, 64, 96)), *conds, draft)
    torch.testing.assert_close(ours, stock, rtol=0, atol=0)  # bit for bit


def test_zero_step_regions_are_returned_unchanged_and_the_rest_refined(run_node, model, conds):
    draft = _draft()
    mask = torch.zeros(1, 64, 96)
    mask[:, :, 48:] = 1.0  # right half important (latent columns 6..11)
    out = _sample(model, _region(run_node, mask, min_steps=0, border=0), *conds, draft)
    left, right = (out - draft)[..., :6].abs().max(), (out - draft)[..., 6:].abs().mean()
    assert left <= 1e-6 * draft.abs().max(), float(left)  # only the float rounding of ComfyUI's latent scaling
    assert right > 0.1


def test_cfg_batches_keep_per_image_maps_and_separate_caches(run_node, model, conds):
    import comfy.samplers

    draft = _draft()
    mask = torch.stack([torch.zeros(64, 96), torch.ones(64, 96)])  # image 0 untouched, image 1 fully refined
    ours = _sample(model, _region(run_node, mask), *conds, draft, cfg=4.0)
    stock = _sample(model, comfy.samplers.sampler_object("euler"), *conds, draft, cfg=4.0)
    assert (ours[0] - draft[0]).abs().max() <= 1e-6 * draft.abs().max()
    torch.testing.assert_close(ours[1], stock[1], rtol=1e-4, atol=1e-4)  # dense image = stock (other batch split)


def test_partial_map_computes_fewer_tokens_and_stays_close(run_node, model, conds, caplog):
    import logging

    draft = _draft(batch=1, h=16, w=16)
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1.0
    with caplog.at_level(logging.INFO):
        out = _sample(model, _region(run_node, mask, min_steps=2, border=1), *conds, draft)
    assert torch.isfinite(out).all()
    line = next(r.getMessage() for r in caplog.records if "region-adaptive sampling" in r.getMessage())
    fraction = float(line.split("steps, ")[1].split("%")[0])
    assert 20 < fraction < 80, line


def test_interrupt_is_honoured(run_node, model, conds):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(model, _region(run_node, torch.ones(1, 64, 96)), *conds, _draft())
    finally:
        mm.interrupt_current_processing(False)


def test_refine_node_runs_img2img_with_strength(run_node, model, conds):
    draft = {"samples": _draft(batch=1) / 0.18215}
    mask = torch.zeros(1, 64, 96)
    mask[:, :32] = 1
    common = dict(model=model, positive=conds[0], negative=conds[1], latent=draft, seed=1, max_steps=4, strength=0.5,
                  cfg=2.0, importance=mask, min_steps=0)
    result = run_node("DiffuGANDiTRefineAdvanced", **common, scheduler="normal", border=0, dense_every=0)
    out = result.args[0]["samples"]
    # the node shows the step map it used: the top half's tokens red (all 4 steps), the rest dark blue (0 steps)
    import folder_paths

    [shown] = result.ui.as_dict()["images"]
    assert shown["type"] == "temp"
    step_map = Image.open(Path(folder_paths.get_temp_directory()) / shown["subfolder"] / shown["filename"])
    px = np.asarray(step_map.convert("RGB"), dtype=np.float32) / 255
    assert px.shape == (64, 96, 3)  # the image's size: 8 x the latent's 8 x 12
    assert px[:32, :, 0].min() > 0.8 and px[:32, :, 2].max() < 0.2  # red: every step
    assert px[32:, :, 0].max() < 0.1 and px[32:, :, 2].min() > 0.25  # dark blue: untouched
    assert out.shape == draft["samples"].shape
    torch.testing.assert_close(out[..., 4:, :], draft["samples"][..., 4:, :], rtol=1e-6, atol=1e-6)
    assert (out[..., :4, :] - draft["samples"][..., :4, :]).abs().mean() > 0.01
    # the simple node: the advanced one at its defaults (normal schedule, no border, no dense refresh)
    simple = run_node("DiffuGANDiTRefine", **common).args[0]["samples"]
    advanced = run_node("DiffuGANDiTRefineAdvanced", **common, scheduler="normal", border=0,
                        dense_every=0).args[0]["samples"]
    assert torch.equal(simple, advanced)
    torch.testing.assert_close(simple[..., 6:, :], draft["samples"][..., 6:, :], rtol=1e-6, atol=1e-6)


def test_region_sampling_stacks_with_easycache(run_node, model, conds):
    """Core's EasyCache on the same MODEL: at threshold 0 it never reuses (the region result bit for bit); at a
    high threshold it skips whole steps around the region-adaptive evaluations (still a refinement, finite)."""
    mask = torch.zeros(1, 64, 96)
    mask[:, :, 48:] = 1.0
    draft = _draft()
    region = _sample(model, _region(run_node, mask, min_steps=2), *conds, draft, steps=12)

    from comfy_extras.nodes_easycache import EasyCacheNode  # core's node, run as the executor runs it

    def cached(threshold):
        patched = EasyCacheNode.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(
            model=model, reuse_threshold=threshold, start_percent=0.0, end_percent=1.0, verbose=False).args[0]
        return _sample(patched, _region(run_node, mask, min_steps=2), *conds, draft, steps=12)

    torch.testing.assert_close(cached(0.0), region, rtol=0, atol=0)
    skipping = cached(3.0)
    assert torch.isfinite(skipping).all() and not torch.equal(skipping, region)
    assert (skipping - region).abs().mean() < (region - draft).abs().mean()  # a perturbation, not another image
    assert "diffugan_region" not in str(model.model_options)  # the run's wrapper never reached the MODEL


def test_region_sampler_refuses_other_models(run_node, comfy):
    class Fake:
        inner_model = type("G", (), {"inner_model": object()})()

    import sys

    pack = next(mod for name, mod in sys.modules.items() if name.endswith("custom_nodes/DiffuGAN"))
    with pytest.raises(ValueError, match="needs a DiffuGAN DiT model"):
        pack.nodes.dit.region_adaptive_euler(Fake(), torch.zeros(1, 4, 8, 8), torch.tensor([1.0, 0.0]),
                                             importance=torch.ones(1, 1, 8, 8))
