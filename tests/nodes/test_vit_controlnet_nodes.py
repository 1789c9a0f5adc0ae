"""ViT ControlNet nodes inside the real ComfyUI: Apply patches a DiT MODEL that stock samplers and our
region-adaptive Refine node use; identity guarantees hold through ComfyUI's sampling; clear errors."""
import os

import pytest
import torch

from diffugan.models import dit
from diffugan.models import vit_controlnet as vc
from devkit.random_weights import perturb

CFG = dit.DiTConfig(depth=3, hidden_size=64, num_heads=4, patch_size=2, num_classes=10, input_size=8)


def _perturbed(module, seed):
    torch.manual_seed(seed)
    return perturb(module)


@pytest.fixture(scope="module")
def files(comfy):
    import folder_paths

    base = _perturbed(dit.DiT(CFG).eval(), 0)
    dit_dir = folder_paths.get_folder_paths("dit")[0]
    os.makedirs(dit_dir, exist_ok=True)
    dit.save_dit_safetensors(base, os.path.join(dit_dir, "cn-base.safetensors"))
    other = dit.DiT(dit.DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, num_classes=10, input_size=8))
    dit.save_dit_safetensors(other, os.path.join(dit_dir, "cn-other.safetensors"))
    cn_dir = folder_paths.get_folder_paths("diffugan_controlnet")[0]
    os.makedirs(cn_dir, exist_ok=True)
    vc.save_controlnet(vc.ViTControlNet.from_dit(base, depth=2), os.path.join(cn_dir, "fresh.safetensors"))
    vc.save_controlnet(_perturbed(vc.ViTControlNet.from_dit(base, depth=2), 1),
                       os.path.join(cn_dir, "trained.safetensors"))
    return base


def _load(run_node, files):
    model = run_node("DiffuGANDiTLoader", ckpt_name="cn-base.safetensors", num_heads=0).args[0]
    conds = run_node("DiffuGANDiTConditioning", class_label=3).args
    return model, conds


SIMPLE = {"strength", "budget", "importance"}
ADVANCED = dict(importance_modulation=0.0, edge_priority=0.0, edge_gain=0.0, over_steps="every step", reuse_n=2,
                rotation_top_share=0.0)


def _apply(run_node, model, name, image, **kw):
    """Apply, or Apply (Advanced) when an advanced setting is given (the others at their defaults)."""
    cn = run_node("DiffuGANControlNetLoader", controlnet_name=name).args[0]
    args = dict(strength=1.0, budget=1.0) | kw
    if set(kw) <= SIMPLE:
        return run_node("DiffuGANControlNetApply", model=model, controlnet=cn, image=image, **args).args[0]
    return run_node("DiffuGANControlNetApplyAdvanced", model=model, controlnet=cn, image=image,
                    **(ADVANCED | args)).args[0]


def _runs(patched) -> list:
    """Records the step state each sampling run of the last applied ControlNet gets (it is dropped at the end)."""
    patch = patched.model_options["transformer_options"]["patches"]["diffugan_dit_control"][-1]
    made, new_run = [], patch.new_run
    patch.new_run = lambda: made.append(new_run()) or made[-1]
    return made


def _sample(comfy, model, conds, batch=2, h=8, w=12, cfg=3.0):
    latent = {"samples": torch.zeros(batch, 4, h, w)}
    return comfy.common_ksampler(model, 0, 3, cfg, "euler", "normal", conds[0], conds[1], latent)[0]["samples"]


def _edges(h=64, w=96, batch=1):
    img = torch.zeros(batch, h, w, 3)
    img[:, h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1.0  # a bright square: its outline is the edge map
    return img


def test_identity_through_comfy_sampling(comfy, run_node, files):
    model, conds = _load(run_node, files)
    plain = _sample(comfy, model, conds)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    assert torch.equal(_sample(comfy, _apply(run_node, model, "fresh.safetensors", control), conds), plain)
    assert torch.equal(_sample(comfy, _apply(run_node, model, "trained.safetensors", control, strength=0.0), conds),
                       plain)
    on = _sample(comfy, _apply(run_node, model, "trained.safetensors", control), conds)
    assert (on - plain).abs().max() > 1e-3
    assert torch.equal(_sample(comfy, model, conds), plain)  # Apply patched a clone, not the loaded model


def test_budget_and_importance_with_batches(comfy, run_node, files):
    model, conds = _load(run_node, files)
    edges = run_node("DiffuGANEdges", image=_edges(batch=2), low_threshold=0.1, high_threshold=0.2).args[0]
    importance = torch.zeros(2, 64, 96)
    importance[:, :32] = 1.0
    dense = _sample(comfy, _apply(run_node, model, "trained.safetensors", edges), conds)
    budget = _sample(comfy, _apply(run_node, model, "trained.safetensors", edges, budget=0.25,
                                   importance=importance), conds)
    # the simple node spends the budget by importance when given one: the same as the advanced node at edge_priority 0
    advanced = _sample(comfy, _apply(run_node, model, "trained.safetensors", edges, budget=0.25,
                                     importance=importance, edge_priority=0.0), conds)
    assert torch.equal(budget, advanced)
    assert dense.shape == budget.shape == (2, 4, 8, 12) and torch.isfinite(budget).all()
    assert not torch.allclose(dense, budget)
    # stacking two ControlNets works
    twice = _apply(run_node, _apply(run_node, model, "trained.safetensors", edges), "trained.safetensors", edges,
                   strength=0.5)
    assert torch.isfinite(_sample(comfy, twice, conds)).all()


def test_region_adaptive_refine_uses_the_controlnet(run_node, files):
    model, conds = _load(run_node, files)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    draft = {"samples": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))}
    mask = torch.zeros(1, 64, 96)
    mask[:, :32] = 1.0

    def refine(m):
        return run_node("DiffuGANDiTRefine", model=m, positive=conds[0], negative=conds[1], latent=draft, seed=1,
                        max_steps=3, strength=0.5, cfg=2.0, importance=mask, min_steps=0).args[0]["samples"]

    plain = refine(model)
    assert torch.equal(refine(_apply(run_node, model, "fresh.safetensors", control)), plain)
    controlled = refine(_apply(run_node, model, "trained.safetensors", control))
    assert (controlled - plain)[..., :4, :].abs().max() > 1e-4
    torch.testing.assert_close(controlled[..., 6:, :], draft["samples"][..., 6:, :], rtol=1e-6, atol=1e-6)  # border 1


def test_clear_errors(comfy, run_node, files):
    other = run_node("DiffuGANDiTLoader", ckpt_name="cn-other.safetensors", num_heads=0).args[0]
    with pytest.raises(ValueError, match="DiffuGAN ViT ControlNet Apply: this ControlNet was made for another DiT"):
        _apply(run_node, other, "trained.safetensors", _edges())
    from comfy.model_patcher import ModelPatcher

    not_dit = ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="'model' is not a DiffuGAN DiT"):
        _apply(run_node, not_dit, "trained.safetensors", _edges())
    with pytest.raises(ValueError, match="'low_threshold' \\(0.5\\) must be below 'high_threshold'"):
        run_node("DiffuGANEdges", image=_edges(), low_threshold=0.5, high_threshold=0.2)
    msg = comfy.NODE_CLASS_MAPPINGS["DiffuGANControlNetLoader"].validate_inputs(controlnet_name="canny.safetensors")
    assert "ViT ControlNet 'canny.safetensors' not found. Put it in the 'diffugan_controlnet' model folder" in msg


def test_edges_node_gives_a_binary_edge_image(run_node):
    edges = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    assert edges.shape == (1, 64, 96, 3)
    assert set(edges.unique().tolist()) <= {0.0, 1.0} and 0 < float(edges.mean()) < 0.2


def test_reuse_steps_computes_the_branch_every_nth_step(comfy, run_node, files):
    model, conds = _load(run_node, files)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    every = _sample(comfy, _apply(run_node, model, "trained.safetensors", control), conds)
    assert torch.equal(_sample(comfy, _apply(run_node, model, "trained.safetensors", control,
                                             over_steps="reuse every n steps", reuse_n=1), conds), every)
    patched = _apply(run_node, model, "trained.safetensors", control, over_steps="reuse every n steps", reuse_n=2)
    runs = _runs(patched)
    first = _sample(comfy, patched, conds)  # 3 steps: the branch runs at steps 0 and 2 of each row set
    assert len(runs) == 1 and runs[0].computed == 2 * len(runs[0]._entries) > 0
    patch = patched.model_options["transformer_options"]["patches"]["diffugan_dit_control"][-1]
    assert patch.run is None  # the run's state was dropped when sampling ended
    assert torch.isfinite(first).all() and not torch.equal(first, every)
    assert (first - every).abs().max() < (every - _sample(comfy, model, conds)).abs().max()  # still controlled
    assert torch.equal(_sample(comfy, patched, conds), first)  # a second run starts afresh, with state of its own
    assert len(runs) == 2 and runs[1] is not runs[0]


def test_run_state_is_dropped_when_sampling_fails(comfy, run_node, files):
    import comfy.patcher_extension as pe

    model, conds = _load(run_node, files)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    patched = _apply(run_node, model, "trained.safetensors", control, over_steps="reuse every n steps", reuse_n=2)
    runs = _runs(patched)

    def fail(executor, *args, **kwargs):  # an error inside the run, as an interrupt raises
        raise RuntimeError("interrupted")

    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_fail", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        _sample(comfy, patched, conds)
    patch = patched.model_options["transformer_options"]["patches"]["diffugan_dit_control"][-1]
    assert len(runs) == 1 and patch.run is None


def test_budget_over_steps_processes_one_quarter_per_step(comfy, run_node, files):
    model, conds = _load(run_node, files)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    dense = _sample(comfy, _apply(run_node, model, "trained.safetensors", control), conds)
    patched = _apply(run_node, model, "trained.safetensors", control, budget=0.25,
                     over_steps="rotate budget over steps")
    runs = _runs(patched)
    out = _sample(comfy, patched, conds)  # 3 steps on a 4 x 6 token grid: all 24 tokens, then 6, then 6, per row
    rotating = runs[0]
    rows = sum(shape[0] for _, _, shape in rotating._entries)  # the entries' keys: (images, cond/uncond, shape)
    assert rotating.computed_tokens == (24 + 6 + 6) * rows > 0
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    assert (out - dense).abs().max() < (dense - _sample(comfy, model, conds)).abs().max()
    with pytest.raises(ValueError, match="'over_steps' must be one of"):
        _apply(run_node, model, "trained.safetensors", control, over_steps="sometimes")
