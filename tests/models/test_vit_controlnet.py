"""Adaptive ViT ControlNet: identity guarantees, token budget, layer scale, strict loading, DiT compatibility."""
import pytest
import torch

from diffugan.models import checkpoints as ck
from diffugan.models import dit, region
from diffugan.models import vit_controlnet as vc
from devkit.random_weights import perturb

CFG = dit.DiTConfig(depth=4, hidden_size=64, num_heads=4, patch_size=2, num_classes=10, input_size=16)


def _dit(seed=0):
    torch.manual_seed(seed)
    return perturb(dit.DiT(CFG).eval())


def _trained_like(net, seed=1):
    """Non-zero projections, as after training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in [net.before_proj, *net.after_proj]:
            layer.weight.normal_(0, 0.05)
            layer.bias.normal_(0, 0.01)
        net.layer_gain.uniform_(0.5, 1.5)
    return net


def _inputs(n=2, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, h, w, generator=g)
    t = torch.tensor([500.0] * n)
    y = torch.tensor([3] * n)
    hint = (torch.rand(n, 3, h * 8, w * 8, generator=g) > 0.9).float()
    return x, t, y, hint


def _control(net, hint, settings, importance=None):
    def control(tokens, c, grid):
        return net.residuals(tokens, c, net.prepare_hint(hint, grid), grid, settings, importance)
    return control


def test_fresh_controlnet_copies_blocks_and_changes_nothing():
    model = _dit()
    net = vc.ViTControlNet.from_dit(model, depth=2)
    for a, b in zip(model.blocks[:2], net.blocks):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    x, t, y, hint = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y, control=_control(net, hint, vc.ControlSettings())), model(x, t, y))


def test_strength_zero_is_no_controlnet_and_strength_changes_the_output():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=2))
    x, t, y, hint = _inputs()
    with torch.no_grad():
        plain = model(x, t, y)
        assert torch.equal(model(x, t, y, control=_control(net, hint, vc.ControlSettings(strength=0.0))), plain)
        on = model(x, t, y, control=_control(net, hint, vc.ControlSettings(strength=1.0)))
    assert (on - plain).abs().max() > 1e-3


def test_full_budget_is_the_dense_path_and_gathering_all_tokens_agrees():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=3))
    x, t, y, hint = _inputs()
    tokens, c = model.embed(x), model.conditioning(t, y)
    grid = model.grid(x)
    prepared = net.prepare_hint(hint, grid)
    assert net.select(torch.rand(2, tokens.shape[1]), grid, 1.0) is None  # budget 100 %: the dense code path itself
    with torch.no_grad():
        dense = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=1.0))
        almost = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=1 - 1e-6))
    # 1 - 1e-6 of 96 tokens still rounds up to all of them, through the same (dense) path
    assert all(torch.equal(a, b) for a, b in zip(dense, almost))
    idx = torch.arange(tokens.shape[1]).expand(2, -1)
    net.select = lambda priority, grid, budget: (idx, None)  # force the gather/scatter path over every token
    with torch.no_grad():
        gathered = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=1.0))
    for a, b in zip(dense, gathered):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_budget_processes_the_most_important_tokens_only():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=2))
    x, t, y, hint = _inputs(n=2)
    grid = model.grid(x)
    tokens, c = model.embed(x), model.conditioning(t, y)
    importance = torch.rand(2, tokens.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        res = net.residuals(tokens, c, net.prepare_hint(hint, grid), grid, vc.ControlSettings(budget=0.25),
                            importance)
    k = -(-tokens.shape[1] // 4)
    for i in range(2):
        touched = res[0][i].abs().sum(-1) > 0
        assert int(touched.sum()) == k
        assert set(touched.nonzero().flatten().tolist()) == set(importance[i].topk(k).indices.tolist())
        assert all(torch.equal(r[i][~touched], torch.zeros_like(r[i][~touched])) for r in res)


def test_edge_priority_picks_tokens_by_edge_density():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=1))
    x, t, y, _ = _inputs(n=1, h=16, w=16)
    hint = torch.zeros(1, 3, 128, 128)
    hint[..., :, 64:] = (torch.rand(1, 3, 128, 64) > 0.5).float()  # edges only in the right half
    grid = model.grid(x)
    with torch.no_grad():
        res = net.residuals(model.embed(x), model.conditioning(t, y), net.prepare_hint(hint, grid), grid,
                            vc.ControlSettings(budget=0.5, edge_priority=1.0))
    touched = (res[0][0].abs().sum(-1) > 0).view(8, 8)
    assert touched[:, 4:].all() and not touched[:, :4].any()


def test_importance_modulation_and_edge_gain_scale_per_token():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=1))
    x, t, y, hint = _inputs(n=1, h=8, w=8)
    grid = model.grid(x)
    tokens, c = model.embed(x), model.conditioning(t, y)
    prepared = net.prepare_hint(hint, grid)
    importance = torch.linspace(0, 1, tokens.shape[1])[None]
    with torch.no_grad():
        base = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(strength=2.0))[0]
        mod = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(strength=2.0, importance_modulation=1.0),
                            importance)[0]
        edge = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(strength=2.0, edge_gain=2.0))[0]
    torch.testing.assert_close(mod, base * importance[..., None], rtol=1e-5, atol=1e-6)
    density = net.edge_density(prepared)
    torch.testing.assert_close(edge, base * (1 + 2.0 * density)[..., None], rtol=1e-5, atol=1e-6)


def test_cost_falls_with_the_budget():
    net = vc.ViTControlNet.from_dit(dit.DiT(dit.standard_config("DiT-XL/2", 256)), depth=13)
    dense = net.flops((16, 16), 1.0)
    quarter, tenth = net.flops((16, 16), 0.25), net.flops((16, 16), 0.10)
    # linear layers and the patch embedding fall 4x at a quarter, attention 16x: a little over 4x in all
    assert 4.0 < dense / quarter < 4.5 and dense / tenth > 9.0


def test_odd_sized_and_grey_control_images_are_resized_to_the_grid():
    net = vc.ViTControlNet.from_dit(_dit(), depth=1)
    out = net.prepare_hint(torch.rand(1, 1, 77, 131), (8, 12))
    assert out.shape == (1, 3, 128, 192)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        net.prepare_hint(torch.rand(1, 2, 16, 16), (1, 1))


def test_batch_mismatch_is_a_clear_error():
    model = _dit()
    net = vc.ViTControlNet.from_dit(model, depth=1)
    x, t, y, hint = _inputs(n=3)
    with pytest.raises(ValueError, match=r"control image batch \(2\) does not match the latent batch \(3\)"):
        model(x, t, y, control=_control(net, hint[:2], vc.ControlSettings()))


def test_save_load_strict_and_mismatched_dit_refused(tmp_path):
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=2))
    path = tmp_path / "cn.safetensors"
    vc.save_controlnet(net, path, base="tiny")
    loaded = vc.load_controlnet(path)
    assert loaded.config == net.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    loaded.check_fits(model)
    other = dit.DiT(dit.DiTConfig(depth=6, hidden_size=96, num_heads=4, patch_size=2, num_classes=10, input_size=16))
    with pytest.raises(ValueError,
                       match=r"made for another DiT \(ControlNet vs DiT: hidden size 64 vs 96, depth 4 vs 6\)"):
        loaded.check_fits(other)
    sd = net.state_dict()
    sd["after_proj.0.weight"] = torch.zeros(3, 3)
    ck.save_safetensors(tmp_path / "bad.safetensors", sd, {"format": vc.SAFETENSORS_FORMAT,
                                                            "config": vc.asdict(net.config)})
    with pytest.raises(ck.CheckpointError, match=r"after_proj.0.weight: expected \(64, 64\), found \(3, 3\)"):
        vc.load_controlnet(tmp_path / "bad.safetensors")
    ck.save_safetensors(tmp_path / "sd_cn.safetensors", {"input_hint_block.0.weight": torch.zeros(1)}, {})
    with pytest.raises(ck.CheckpointError, match="not a DiffuGAN ViT ControlNet"):
        vc.load_controlnet(tmp_path / "sd_cn.safetensors")


# --- mixed-resolution tokens (coarse_tokens) -------------------------------------------------------------------
def _mixed(model, depth=2):
    """A trained-like ControlNet with merged tokens (initialised from its plain ones, then perturbed: trained)."""
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=depth)).with_coarse_tokens()
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in [net.hint_embed_coarse, *net.after_proj_coarse]:
            layer.weight.add_(torch.randn_like(layer.weight) * 0.02)
    return net


def _branch_inputs(model, net, n=2, h=16, w=24):
    x, t, y, hint = _inputs(n=n, h=h, w=w)
    grid = model.grid(x)
    return model.embed(x), model.conditioning(t, y), net.prepare_hint(hint, grid), grid


def test_merged_tokens_start_as_the_mean_of_their_tokens_and_copy_the_plain_residual():
    net = _trained_like(vc.ViTControlNet.from_dit(_dit(), depth=2)).with_coarse_tokens()
    hint = torch.rand(1, 3, 32, 32)  # one 2x2 block of 16-px patches
    with torch.no_grad():
        fine = net.hint_embed(hint).flatten(2).mean(-1)
        torch.testing.assert_close(net.hint_embed_coarse(hint).flatten(1), fine, rtol=1e-5, atol=1e-5)
        h = torch.randn(3, 64)
        for plain, merged in zip(net.after_proj, net.after_proj_coarse):
            assert all(torch.equal(part, plain(h)) for part in merged(h).chunk(4, dim=-1))


@pytest.mark.parametrize("h,w", [(16, 24), (14, 18)])  # grids 8x12 and 7x9 (blocks sticking out)
def test_mixed_path_with_every_block_split_equals_the_dense_path(h, w):
    model = _dit()
    net = _mixed(model)
    tokens, c, prepared, grid = _branch_inputs(model, net, h=h, w=w)
    t = tokens.shape[1]
    with torch.no_grad():
        dense = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=1.0))
        every = net._mixed_residuals(tokens, c, prepared.to(tokens.dtype), grid, torch.ones(2, t),
                                     torch.arange(t).expand(2, -1), torch.zeros(2, 0, dtype=torch.long))
    for a, b in zip(dense, every):  # the unfold + gather embedding is the conv's
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    plain = vc.ViTControlNet(vc.ControlNetConfig(**(vc.asdict(net.config) | {"coarse_tokens": False})))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "coarse" not in k})
    with torch.no_grad():  # merged tokens change nothing at a full budget
        assert all(torch.equal(a, b) for a, b in zip(
            dense, plain.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=1.0))))


def test_mixed_budget_splits_the_highest_priority_blocks_and_covers_every_token():
    model = _dit()
    net = _mixed(model)
    tokens, c, prepared, grid = _branch_inputs(model, net)  # 8x12 tokens = 24 blocks of 2x2
    importance = torch.rand(2, 96, generator=torch.Generator().manual_seed(3))
    children = vc.block_children(grid)
    block_imp = importance[:, children].mean(-1)
    fine, merged = net.select(importance, grid, 0.5)  # k = 48 = 24 blocks + 8 splits x 3
    assert fine.shape == (2, 32) and merged.shape == (2, 16)
    with torch.no_grad():
        res = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=0.5), importance)
    for i in range(2):
        split = set(block_imp[i].topk(8).indices.tolist())
        assert set(fine[i].tolist()) == set(children[sorted(split)].flatten().tolist())
        assert set(merged[i].tolist()) == set(range(24)) - split
        assert (res[0][i].abs().sum(-1) > 0).all()  # every token receives control
        # a merged block's 4 tokens get different residuals (its own projection per covered token)
        b = merged[i, 0]
        r = res[0][i, children[b]]
        assert (r[0] - r[3]).abs().max() > 1e-4


def test_mixed_budget_below_a_quarter_skips_the_lowest_priority_blocks():
    model = _dit()
    net = _mixed(model)
    tokens, c, prepared, grid = _branch_inputs(model, net)
    importance = torch.rand(2, 96, generator=torch.Generator().manual_seed(4))
    children = vc.block_children(grid)
    with torch.no_grad():
        res = net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=0.1), importance)  # k = 10
    for i in range(2):
        kept = importance[i, children].mean(-1).topk(10).indices
        expected = torch.zeros(96, dtype=torch.bool)
        expected[children[kept].flatten()] = True
        touched = res[0][i].abs().sum(-1) > 0
        assert torch.equal(touched, expected) and all((r[i][~touched] == 0).all() for r in res)


@pytest.mark.parametrize("coarse_tokens", [True, False], ids=["mixed", "plain"])
def test_cost_is_counted_honestly_and_beats_three_at_a_quarter_budget(coarse_tokens):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = dit.DiTConfig(depth=6, hidden_size=256, num_heads=4, patch_size=2, num_classes=10, input_size=16)
    torch.manual_seed(0)
    model = dit.DiT(cfg).eval()
    net = vc.ViTControlNet.from_dit(model, depth=3, hint_channels=1, coarse_tokens=coarse_tokens)  # as the zoo's
    x, t, y = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.tensor([3])
    grid = model.grid(x)
    tokens, c = model.embed(x), model.conditioning(t, y)
    prepared = net.prepare_hint((torch.rand(1, 1, 128, 128) > 0.9).float(), grid)
    cases = [(b, None) for b in (1.0, 0.5, 0.25, 0.1)] + [(1.0, torch.arange(0, 64, 4))]  # 16 tokens as `only`
    for budget, only in cases:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net.residuals(tokens, c, prepared, grid, vc.ControlSettings(budget=budget), None, only)
        # torch does not count the attention on the CPU (its fused kernel), which ours counts: a few per cent
        counted = net.flops(grid, budget, None if only is None else len(only))
        assert 0.95 < counted / counter.get_total_flops() < 1.05, (budget, only)
    assert net.flops(grid, 1.0) / net.flops(grid, 0.25) > 3.0


def test_mixed_controlnet_saves_and_loads_strictly(tmp_path):
    model = _dit()
    net = _mixed(model)
    vc.save_controlnet(net, tmp_path / "mixed.safetensors")
    loaded = vc.load_controlnet(tmp_path / "mixed.safetensors")
    assert loaded.config.coarse_tokens
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    sd = {k: v for k, v in net.state_dict().items() if "coarse" not in k}  # a file that lacks the merged tokens
    ck.save_safetensors(tmp_path / "half.safetensors", sd, {"format": vc.SAFETENSORS_FORMAT,
                                                             "config": vc.asdict(net.config)})
    with pytest.raises(ck.CheckpointError, match="after_proj_coarse.0.weight"):
        vc.load_controlnet(tmp_path / "half.safetensors")


def test_region_adaptive_subset_pass_applies_the_same_residuals():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=2))
    x, t, y, hint = _inputs(n=1)
    control = _control(net, hint, vc.ControlSettings(budget=0.5))
    with torch.no_grad():
        full = model(x, t, y, control=control)
        cache = region.KVCache()
        subset_all = region.forward_tokens(model, x, t, y, None, None, cache, control=control)
    torch.testing.assert_close(subset_all, full, rtol=1e-5, atol=1e-5)


def test_bad_config_metadata_is_refused_naming_the_file(tmp_path):
    net = vc.ViTControlNet.from_dit(_dit(), depth=1)
    ck.save_safetensors(tmp_path / "odd.safetensors", net.state_dict(),
                        {"format": vc.SAFETENSORS_FORMAT, "config": {"hidden_size": 64, "layers": 3}})
    with pytest.raises(ck.CheckpointError, match="odd.safetensors: bad DiffuGAN ViT ControlNet config in the metadata"):
        vc.load_controlnet(tmp_path / "odd.safetensors")
    with pytest.raises(ck.CheckpointError, match="cn.pt: a DiffuGAN ViT ControlNet is a .safetensors file"):
        vc.load_controlnet(tmp_path / "cn.pt")


def test_canny_edges_are_binary_and_refuse_bad_input():
    img = torch.zeros(1, 3, 32, 32)
    img[:, :, 8:24, 8:24] = 1
    e = vc.canny_edges(img)
    assert e.shape == (1, 1, 32, 32) and set(e.unique().tolist()) == {0.0, 1.0}
    assert e[0, 0, 16, 16] == 0 and e[0, 0, 8:24, 7:9].sum() > 8
    with pytest.raises(ValueError, match="low_threshold"):
        vc.canny_edges(img, 0.5, 0.2)
    with pytest.raises(ValueError, match="NaN"):
        vc.canny_edges(torch.full((1, 3, 8, 8), float("nan")))


def test_residual_reuse_computes_every_nth_step_per_row_set():
    reuse = vc.ResidualReuse(3)
    computed_at = []

    def run(key, steps):
        return [reuse(key, s, lambda s=s: computed_at.append((key, s)) or s) for s in steps]

    assert run("a", range(7)) == [0, 0, 0, 3, 3, 3, 6]  # residuals of the last computation, reused in between
    assert reuse("a", 6, lambda: -1) == 6  # the same step again: reused
    assert reuse("a", 5, lambda: 5) == 5 and reuse("a", 4, lambda: 4) == 4  # a step before the last one computes
    assert run("a", [0]) + run("b", [0]) + run("a", [1]) + run("b", [1, 2, 3]) == [0, 0, 0, 0, 0, 3]  # new run
    assert reuse.computed == len(computed_at) + 2 == 8
    assert set(reuse._entries) == {"a", "b"}  # the last run's residuals were dropped at step 0
    every = vc.ResidualReuse(1)
    assert [every("k", s, lambda s=s: s) for s in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="reuse steps must be at least 1"):
        vc.ResidualReuse(0)


def test_spread_order_interleaves_2x2_strides():
    order = vc.spread_order((4, 6))
    assert sorted(order.tolist()) == list(range(24))
    assert order[:6].tolist() == [0, 2, 4, 12, 14, 16] and order[6:9].tolist() == [1, 3, 5]  # (even, even) first
    assert vc.spread_order((3, 1)).tolist() == [0, 2, 1]  # an odd grid


def test_rotating_budget_processes_one_interleaved_group_per_step():
    rot = vc.RotatingBudget(0.25)  # no fixed share: the 2x2 stride groups in turn
    grid, order = (4, 6), vc.spread_order((4, 6))
    groups = [order[g * 6:(g + 1) * 6].sort().values.tolist() for g in range(4)]
    priority = torch.rand(2, 24)
    seen = []

    def compute(only, step):
        seen.append(only.tolist())
        return [torch.full((2, 24, 1), float(step))]

    out = [rot("k", s, priority, grid, lambda only, s=s: compute(only, s))[0][:, :, 0] for s in range(6)]
    assert seen[0] == [list(range(24))] * 2  # step 0: every token (the dense branch)
    assert seen[1:] == [[groups[(s - 1) % 4]] * 2 for s in range(1, 6)]
    assert torch.equal(out[0], torch.zeros(2, 24))
    for s in range(1, 6):  # the step's group is new, every other token keeps its last residuals
        chosen = torch.zeros(24, dtype=torch.bool)
        chosen[groups[(s - 1) % 4]] = True
        assert torch.equal(out[s], torch.where(chosen, float(s), out[s - 1]))
    assert rot.computed_tokens == 2 * (24 + 5 * 6)
    assert rot("k", 0, priority, grid, lambda only: compute(only, 9))[0].eq(9).all()  # a new run: every token
    with pytest.raises(ValueError, match="budget must be in"):
        vc.RotatingBudget(0)
    with pytest.raises(ValueError, match="fixed share"):
        vc.RotatingBudget(0.25, fixed=1.5)


def test_rotating_budget_fixed_share_goes_to_each_rows_top_tokens_every_step():
    rot = vc.RotatingBudget(0.25, fixed=0.5)  # k = 6 of 24: the 3 top tokens, and 3 of the other 21 in turn
    grid = (4, 6)
    priority = torch.rand(2, 24, generator=torch.Generator().manual_seed(0))
    top = priority.topk(3, dim=1).indices
    turns = torch.zeros(2, 24, dtype=torch.long)
    for step in range(1, 8):
        chosen = rot.choose(priority, grid, step)
        assert chosen.sum(1).tolist() == [6, 6]
        assert chosen.gather(1, top).all()  # the top tokens, at every step
        turns += chosen
    rest = torch.ones(2, 24, dtype=torch.bool).scatter(1, top, False)
    assert (turns[rest] == 1).all()  # 7 steps of 3 cover the other 21 tokens exactly once
    held = vc.RotatingBudget(0.25, fixed=1.0).choose(priority, grid, 5)  # the whole budget on the top tokens
    assert torch.equal(held, torch.zeros(2, 24, dtype=torch.bool).scatter(1, priority.topk(6, 1).indices, True))


def test_only_processes_the_given_tokens_as_plain_tokens():
    model = _dit()
    net = _trained_like(vc.ViTControlNet.from_dit(model, depth=2, coarse_tokens=True)).eval()
    x, t, y, hint = _inputs()
    grid = model.grid(x)
    only = torch.tensor([0, 5, 7, 23, 40])
    plain = vc.ViTControlNet.from_dit(model, depth=2).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k in plain.state_dict()})
    priority = torch.zeros(1, grid[0] * grid[1]).index_fill(1, only, 1.0)
    with torch.no_grad():
        tokens, c = model.embed(x), model.conditioning(t, y)
        res = net.residuals(tokens, c, net.prepare_hint(hint, grid), grid, vc.ControlSettings(budget=0.25), None, only)
        ref = plain.residuals(tokens, c, plain.prepare_hint(hint, grid), grid,
                              vc.ControlSettings(budget=5 / (grid[0] * grid[1])), priority)
    for r, e in zip(res, ref):  # a mixed-resolution ControlNet given `only` runs them as a plain one would
        torch.testing.assert_close(r, e)
    assert res[0][:, [1, 2, 3]].abs().max() == 0 and res[0][:, only].abs().max() > 0
    per_row = torch.stack([only, torch.tensor([1, 2, 3, 4, 5])])  # or a token set per row
    with torch.no_grad():
        rows = net.residuals(tokens, c, net.prepare_hint(hint, grid), grid, vc.ControlSettings(), None, per_row)
    torch.testing.assert_close(rows[0][0], res[0][0])
    assert rows[0][1, [0, 6]].abs().max() == 0 and rows[0][1, 1:6].abs().min() > 0
    t = grid[0] * grid[1]
    cost = [net.flops(grid, 1.0, plain_tokens=k) for k in (t // 4, t // 2, t)]
    assert cost[0] < cost[1] < cost[2] == net.flops(grid, 1.0)
    assert 4 < cost[2] / cost[0] < 4.5  # only the processed tokens' patches are embedded
