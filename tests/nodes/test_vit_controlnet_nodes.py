"""ViT ControlNet nodes inside the real ComfyUI: Apply patches a DiT MODEL that stock samplers and our
region-adaptive Refine node use; identity guarantees hold through ComfyUI's sampling; clear errors."""
import os

import pytest
import torch

from diffugan.models import dit
from diffugan.models import vit_controlnet as vc
from random_weights import perturb

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


def _apply(run_node, model, name, image, **kw):
    args = dict(strength=1.0, budget=1.0, importance_modulation=0.0, edge_priority=0.0, edge_gain=0.0)
    args.update(kw)
    cn = run_node("DiffuGANControlNetLoader", controlnet_name=name).args[0]
    return run_node("DiffuGANControlNetApply", model=model, controlnet=cn, image=image, **args).args[0]


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
                        max_steps=3, strength=0.5, cfg=2.0, scheduler="normal", importance=mask, min_steps=0,
                        border=0, dense_every=0).args[0]["samples"]

    plain = refine(model)
    assert torch.equal(refine(_apply(run_node, model, "fresh.safetensors", control)), plain)
    controlled = refine(_apply(run_node, model, "trained.safetensors", control))
    assert (controlled - plain)[..., :4, :].abs().max() > 1e-4
    torch.testing.assert_close(controlled[..., 4:, :], draft["samples"][..., 4:, :], rtol=1e-6, atol=1e-6)


def test_clear_errors(comfy, run_node, files):
    other = run_node("DiffuGANDiTLoader", ckpt_name="cn-other.safetensors", num_heads=0).args[0]
    with pytest.raises(ValueError, match="DiffuGAN ViT ControlNet Apply: this ControlNet was made for another DiT"):
        _apply(run_node, other, "trained.safetensors", _edges())
    from comfy.model_patcher import ModelPatcher

    not_dit = ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="'model' is not a DiffuGAN DiT"):
        _apply(run_node, not_dit, "trained.safetensors", _edges())
    with pytest.raises(ValueError, match="low_threshold \\(0.5\\) must be below high_threshold"):
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
    assert torch.equal(_sample(comfy, _apply(run_node, model, "trained.safetensors", control, reuse_steps=1), conds),
                       every)
    patched = _apply(run_node, model, "trained.safetensors", control, reuse_steps=2)
    reuse = patched.model_options["transformer_options"]["diffugan_control"][-1].reuse
    first = _sample(comfy, patched, conds)  # 3 steps: the branch runs at steps 0 and 2 of each row set
    assert reuse.computed == 2 * len(reuse._entries) > 0
    assert torch.isfinite(first).all() and not torch.equal(first, every)
    assert (first - every).abs().max() < (every - _sample(comfy, model, conds)).abs().max()  # still controlled
    assert torch.equal(_sample(comfy, patched, conds), first)  # a second run starts afresh, not from the first's


def test_budget_over_steps_processes_one_quarter_per_step(comfy, run_node, files):
    model, conds = _load(run_node, files)
    control = run_node("DiffuGANEdges", image=_edges(), low_threshold=0.1, high_threshold=0.2).args[0]
    dense = _sample(comfy, _apply(run_node, model, "trained.safetensors", control), conds)
    patched = _apply(run_node, model, "trained.safetensors", control, budget=0.25, budget_over_steps=True)
    rotating = patched.model_options["transformer_options"]["diffugan_control"][-1].reuse
    out = _sample(comfy, patched, conds)  # 3 steps on a 4 x 6 token grid: all 24 tokens, then 6, then 6, per row
    rows = sum(shape[0] for _, _, shape in rotating._entries)  # the entries' keys: (images, cond/uncond, shape)
    assert rotating.computed_tokens == (24 + 6 + 6) * rows > 0
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    assert (out - dense).abs().max() < (dense - _sample(comfy, model, conds)).abs().max()
    with pytest.raises(ValueError, match="'reuse_steps' and 'budget_over_steps' are two ways"):
        _apply(run_node, model, "trained.safetensors", control, budget=0.25, budget_over_steps=True, reuse_steps=2)
