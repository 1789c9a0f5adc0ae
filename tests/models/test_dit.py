"""DiT model + checkpoint tests on small checkpoints written in facebookresearch/DiT's layout."""
import argparse
import pickle

import pytest
import torch

from diffugan.models import checkpoints as ck
from devkit import sampling
from diffugan.models import dit, flops, region
from devkit.random_weights import perturb

TINY = dit.DiTConfig(depth=2, hidden_size=384, num_heads=6, patch_size=2, num_classes=10, input_size=8)

# facebookresearch/DiT parameter names for one block (a fact of the file format, checked against their models.py)
BLOCK_KEYS = ["adaLN_modulation.1.bias", "adaLN_modulation.1.weight", "attn.proj.bias", "attn.proj.weight",
              "attn.qkv.bias", "attn.qkv.weight", "mlp.fc1.bias", "mlp.fc1.weight", "mlp.fc2.bias", "mlp.fc2.weight"]
TOP_KEYS = ["final_layer.adaLN_modulation.1.bias", "final_layer.adaLN_modulation.1.weight", "final_layer.linear.bias",
            "final_layer.linear.weight", "pos_embed", "t_embedder.mlp.0.bias", "t_embedder.mlp.0.weight",
            "t_embedder.mlp.2.bias", "t_embedder.mlp.2.weight", "x_embedder.proj.bias", "x_embedder.proj.weight",
            "y_embedder.embedding_table.weight"]


def make_dit(config=TINY, seed=0):
    torch.manual_seed(seed)
    return perturb(dit.DiT(config).eval().requires_grad_(False))  # outputs depend on every weight


def test_parameter_names_are_facebookresearch_names():
    keys = sorted(make_dit().state_dict())
    expected = sorted(TOP_KEYS + [f"blocks.{i}.{k}" for i in range(TINY.depth) for k in BLOCK_KEYS])
    assert keys == expected
    assert make_dit().state_dict()["y_embedder.embedding_table.weight"].shape == (11, 384)  # classes + null


def test_state_dict_pt_loads_strictly_with_heads_from_the_name(tmp_path):
    m = make_dit()
    path = tmp_path / "DiT-S-2-64x64.pt"
    torch.save(m.state_dict(), path)
    loaded = dit.load_dit(path)
    assert loaded.config == TINY
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 900.0]), torch.tensor([1, 10])
    torch.testing.assert_close(loaded(x, t, y), m(x, t, y), rtol=0, atol=0)


def test_train_checkpoint_uses_ema_and_reads_the_args_record(tmp_path):
    ema, raw = make_dit(seed=0), make_dit(seed=1)
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="DiT-S/2", image_size=64, num_classes=10)}, path)
    loaded = dit.load_dit(path)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_safetensors_round_trip_keeps_the_config(tmp_path):
    cfg = dit.DiTConfig(depth=1, hidden_size=96, num_heads=3, patch_size=4, num_classes=5, input_size=16, style_dim=8)
    m = make_dit(cfg)
    path = tmp_path / "mine.safetensors"
    dit.save_dit_safetensors(m, path)
    loaded = dit.load_dit(path)
    assert loaded.config == cfg  # a non-standard head count survives through the metadata
    style = torch.randn(1, 8)
    x, t, y = torch.randn(1, 4, 16, 16), torch.tensor([10.0]), torch.tensor([2])
    torch.testing.assert_close(loaded(x, t, y, style), m(x, t, y, style), rtol=0, atol=0)


def test_non_standard_width_needs_heads_and_says_so(tmp_path):
    m = make_dit(dit.DiTConfig(depth=1, hidden_size=96, num_heads=3, patch_size=2, num_classes=5, input_size=8))
    path = tmp_path / "custom.pt"
    torch.save(m.state_dict(), path)
    with pytest.raises(ck.CheckpointError, match="custom.pt: hidden size 96 is not a standard DiT size.*choose it"):
        dit.load_dit(path)
    assert dit.load_dit(path, num_heads=3).config.num_heads == 3


def test_wrong_shape_and_missing_keys_are_named(tmp_path):
    sd = make_dit().state_dict()
    sd["blocks.1.attn.qkv.weight"] = torch.zeros(1152, 400)
    del sd["blocks.0.mlp.fc2.bias"]
    path = tmp_path / "DiT-S-2-64x64.pt"
    torch.save(sd, path)
    with pytest.raises(ck.CheckpointError, match=r"blocks.1.attn.qkv.weight: expected \(1152, 384\), "
                       r"found \(1152, 400\)"
                       r".*missing keys \(1\): blocks.0.mlp.fc2.bias"):
        dit.load_dit(path)


def test_not_a_dit_is_explained(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(1)}, path)
    with pytest.raises(ck.CheckpointError,
                       match="unet.pt: not a DiT checkpoint .*facebookresearch/DiT parameter names"):
        dit.load_dit(path)


class _Payload:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def test_pickle_payload_in_a_pt_is_refused(tmp_path):
    path = tmp_path / "DiT-XL-2-256x256.pt"
    with open(path, "wb") as f:
        torch.save({"pos_embed": torch.zeros(1), "x": _Payload()}, f)
    with pytest.raises(ck.UnsafePickleError, match="DiT-XL-2-256x256.pt: refused to load"):
        dit.load_dit(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))  # a plain pickle, not a torch.save file: refused before it is read
    with pytest.raises(ck.CheckpointError, match="raw.pt: a plain pickle, not a file written by torch.save"):
        dit.load_dit(raw)


def test_position_table_recomputed_at_any_grid_equals_the_stored_one():
    m = make_dit()
    stored = m.pos_embed[0]  # 4x4 grid for input_size 8, patch 2
    torch.testing.assert_close(dit.sincos_pos_embed(384, 4, 4), stored, rtol=0, atol=0)
    wide = dit.sincos_pos_embed(384, 3, 7).view(3, 7, 384)
    square = dit.sincos_pos_embed(384, 7, 7).view(7, 7, 384)
    torch.testing.assert_close(wide, square[:3], rtol=0, atol=0)  # a token's embedding depends on (row, col) only


def test_non_square_and_other_sizes_run():
    m = make_dit()
    out = m(torch.randn(2, 4, 12, 20), torch.tensor([5.0, 50.0]), torch.tensor([0, 3]))
    assert out.shape == (2, 8, 12, 20)
    with pytest.raises(ValueError, match="latent size 9x20 is not divisible by the DiT patch size 2"):
        m(torch.randn(1, 4, 9, 20), torch.tensor([5.0]), torch.tensor([0]))


def test_fresh_dit_predicts_zero_and_batch_is_independent():
    fresh = dit.DiT(TINY)
    assert fresh(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.tensor([2])).abs().max() == 0
    m = make_dit()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([1.0, 400.0, 999.0]), torch.tensor([1, 2, 10])
    full = m(x, t, y)
    torch.testing.assert_close(m(x[1:2], t[1:2], y[1:2]), full[1:2], rtol=1e-5, atol=1e-5)


def test_standard_configs_match_the_published_sizes():
    xl = dit.standard_config("DiT-XL/2", 256)
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size, xl.input_size) == (28, 1152, 16, 2, 32)
    params = sum(p.numel() for p in dit.DiT(xl).parameters() if p.requires_grad)
    assert abs(params / 1e6 - 675.1) < 0.5, params  # DiT-XL/2: 675M trainable parameters
    with pytest.raises(ValueError, match="unknown DiT model 'DiT-XXL/2'"):
        dit.standard_config("DiT-XXL/2")


def test_schedule_is_dits_linear_betas():
    b = dit.linear_betas()
    assert b.shape == (1000,) and float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    torch.testing.assert_close(b[1] - b[0], b[-1] - b[-2])


# --- region-adaptive pieces -----------------------------------------------------------------------------------
def test_evaluation_schedule_counts_and_spacing():
    counts = torch.tensor([[0, 1, 3, 5, 8]])
    sched = region.evaluation_schedule(counts, 8)[0]  # (K, T)
    assert sched.sum(0).tolist() == [0, 1, 3, 5, 8]  # each token evaluated exactly n times
    assert sched[0, 1:].all()  # step 0 evaluates every token that has steps
    assert sched[:, 2].nonzero()[:, 0].tolist() == [0, 2, 5]  # floor(j * 8 / 3)
    with pytest.raises(ValueError, match="step counts must be in 0..8"):
        region.evaluation_schedule(torch.tensor([[9]]), 8)


def test_token_counts_follow_the_mean_level_of_each_token():
    m = torch.zeros(1, 1, 64, 96)  # an image-sized map over a 4 x 6 token grid (16 px per token)
    m[..., :32, :] = 1.0  # top half: full work
    m[..., 32:40, :48] = 1.0  # a quarter of the next token row's left half
    counts = region.token_step_counts(m, (4, 6), total_steps=10, min_steps=2).view(4, 6)
    assert counts[:2].eq(10).all() and counts[3].eq(2).all()
    assert counts[2, :3].eq(2 + round(0.5 * 8)).all() and counts[2, 3:].eq(2).all()  # mean level 0.5 -> 6 steps
    # the transformer's work follows the map's mean: tokens' mean step share above min_steps = the map's mean
    assert abs(float((counts.float() - 2).mean() / 8) - float(m.mean())) < 1e-6
    grown = region.token_step_counts(m, (4, 6), 10, 2, border=1).view(4, 6)
    assert grown[:3].eq(10).all() and grown[3, :4].eq(6).all() and grown[3, 4:].eq(2).all()
    with pytest.raises(ValueError, match="min_steps 11 must be between 0 and the number of steps"):
        region.token_step_counts(m, (4, 6), 10, 11)


def test_forecast_records_only_the_evaluated_tokens_along_the_token_dim():
    ev = region.TokenForecast(torch.zeros(4, 2, 3), sigma=3.0, tokens=4)  # (T, 2 x depth, dh)-like, token-major
    fresh = torch.ones(4, 2, 3)
    ev.record(fresh, None, torch.tensor([True, False, True, False]), sigma=2.0, token_dim=0, copy=False)
    assert ev.last[[0, 2]].eq(1).all() and ev.last[[1, 3]].eq(0).all() and ev.prev.eq(0).all()
    assert ev.s_last.tolist() == [2.0, 3.0, 2.0, 3.0] and ev.s_prev[[0, 2]].eq(3.0).all()
    # linear in sigma from the last two evaluations: at sigma 1 the evaluated tokens extrapolate to 2, the rest hold
    d = ev.weight(1.0, forecast=1)
    assert d.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ev.at(d.view(-1, 1, 1))[[0, 2]].eq(2).all() and ev.at(d.view(-1, 1, 1))[[1, 3]].eq(0).all()


def test_subset_pass_with_fresh_cache_equals_dense_at_active_tokens():
    m = make_dit()
    x, t, y = torch.randn(2, 4, 8, 12), torch.tensor([5.0, 5.0]), torch.tensor([1, 10])
    cache = region.KVCache()
    dense = region.forward_tokens(m, x, t, y, None, None, cache)
    torch.testing.assert_close(dense, m(x, t, y), rtol=0, atol=0)
    idx = torch.tensor([0, 3, 5, 20])
    sub = region.forward_tokens(m, x, t, y, None, idx, cache)
    mask = region.token_pixels(torch.zeros(1, 24, dtype=torch.bool).index_fill(1, idx, True), (4, 6), 2)
    torch.testing.assert_close(sub * mask, dense * mask, rtol=1e-5, atol=1e-5)


def test_counted_flops_fall_with_the_active_fraction():
    cfg = dit.standard_config("DiT-XL/2", 256)
    dense = flops.transformer_flops(cfg, 256, 256)
    # The DiT paper reports 118.6 "Gflops" for DiT-XL/2 at 256², counting multiply-adds; we count 2 per MAC.
    assert abs(dense / 2 / 1e9 - 118.6) < 0.02 * 118.6, dense
    quarter = flops.transformer_flops(cfg, 64, 256)
    assert 0.24 < quarter / dense < 0.27  # linear layers dominate; attention keys stay at all 256 tokens


def test_evaluations_forecast_linearly_in_sigma_and_hold_otherwise():
    ev = region.TokenForecast(torch.tensor([1.0, 5.0]), sigma=3.0, tokens=2)
    assert torch.equal(ev.weight(2.0, forecast=1), torch.zeros(2))  # one evaluation: held
    ev.record(torch.tensor([2.0, 7.0]), torch.tensor([True, False]), torch.tensor([True, False]), sigma=2.0)
    d = ev.weight(1.5, forecast=1)  # token 0: (2 - 1.5) / (3 - 2); token 1 has one evaluation
    assert torch.equal(d, torch.tensor([0.5, 0.0]))
    assert torch.equal(ev.at(d), torch.tensor([2.5, 5.0]))
    assert torch.equal(ev.weight(0.0, forecast=1), torch.tensor([1.0, 0.0]))  # never past one gap
    assert torch.equal(ev.weight(1.5, forecast=0), torch.zeros(2))
    with pytest.raises(ValueError, match="forecast must be 0"):
        region.RegionRefinement(make_dit(), torch.ones(1, 4, dtype=torch.long), torch.ones(3), None, forecast=2)


@pytest.mark.parametrize("forecast", [0, 1])
def test_region_state_with_every_token_every_step_is_plain_euler(forecast):
    m = make_dit()
    draft, noise = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    y = torch.tensor([1, 2])
    sigmas, ts = sampling.img2img_schedule(6, 0.5)
    plain, _ = sampling.euler_img2img(m, draft, y, sigmas, ts, 2.0, noise)
    full = torch.full((2, 24), 6)
    region, state = sampling.euler_img2img(m, draft, y, sigmas, ts, 2.0, noise, full, forecast=forecast)
    torch.testing.assert_close(region, plain, rtol=0, atol=0)
    assert state.flops == state.dense_flops


def test_held_predictions_follow_the_n_step_euler_schedule_exactly():
    """forecast 0: a token evaluated at every other step follows Euler on every other sigma."""
    m = make_dit()
    draft, noise = torch.randn(1, 4, 8, 12), torch.randn(1, 4, 8, 12)
    y = torch.tensor([3])
    sigmas, ts = sampling.img2img_schedule(8, 0.6)
    half, _ = sampling.euler_img2img(m, draft, y, sigmas, ts, 1.0, noise, torch.full((1, 24), 4), forecast=0)
    sub_sigmas = torch.cat([sigmas[:-1:2], sigmas[-1:]])
    coarse, _ = sampling.euler_img2img(m, draft, y, sub_sigmas, ts[::2], 1.0, noise)
    torch.testing.assert_close(half, coarse, rtol=1e-5, atol=1e-5)
    forecast, _ = sampling.euler_img2img(m, draft, y, sigmas, ts, 1.0, noise, torch.full((1, 24), 4), forecast=1)
    assert (forecast - coarse).abs().max() > 1e-4  # the forecast changes the in-between steps


def test_region_sampling_never_writes_into_the_draft_or_noise():
    """The caches are updated in place: they must own their tensors (ComfyUI hands the same cached latent to other
    nodes)."""
    m = make_dit()
    draft, noise = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    keep = draft.clone(), noise.clone()
    counts = torch.randint(0, 7, (2, 24))  # mixed counts: partial updates at most steps, some tokens untouched
    sigmas, ts = sampling.img2img_schedule(6, 0.7)
    out, state = sampling.euler_img2img(m, draft, torch.tensor([1, 2]), sigmas, ts, 2.0, noise, counts)
    assert torch.equal(draft, keep[0]) and torch.equal(noise, keep[1])
    untouched = state.untouched_pixels(m.grid(draft))
    assert torch.equal(out[untouched.expand_as(out)], keep[0][untouched.expand_as(out)])
    assert state.flops < state.dense_flops
