"""Pure-torch tests of models/importance.py (no ComfyUI)."""
import pytest
import torch

from diffugan.models import importance as imp


# --- analytic scorer ------------------------------------------------------------------------------------------
def _textured_and_flat(h=128, w=256):
    g = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, h, w), 0.5)
    image[..., :, : w // 2] = torch.rand(1, 3, h, w // 2, generator=g)  # textured left half, flat right half
    return image


def test_analytic_ranks_texture_above_flat():
    m = imp.analytic_importance(_textured_and_flat())
    assert m.shape == (1, 1, 128, 256)
    left, right = m[..., 16:-16, 16:112].mean(), m[..., 16:-16, 144:240].mean()
    assert left > 0.5 and right < 0.05, (float(left), float(right))
    assert float(m.min()) >= 0 and float(m.max()) <= 1


def test_analytic_preserves_sizes_and_batches_and_is_per_image():
    a = _textured_and_flat(96, 160)
    b = a.flip(-1) * 0.5  # texture on the other side, half the contrast
    m = imp.analytic_importance(torch.cat([a, b]))
    assert m.shape == (2, 1, 96, 160)
    torch.testing.assert_close(imp.analytic_importance(a), m[:1])  # batching does not change a result
    assert m[1, 0, 48, 150] > m[1, 0, 48, 10]  # each image normalised on its own
    assert float(m[1].max()) > 0.9


def test_analytic_flat_image_scores_zero_not_noise():
    flat = torch.zeros(1, 3, 64, 96)
    flat[:, 1] = 0.5
    assert float(imp.analytic_importance(flat).max()) < 1e-3


def test_analytic_rejects_non_finite():
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'image' contains 1 NaN/inf"):
        imp.analytic_importance(x)


# --- user emphasis --------------------------------------------------------------------------------------------
def test_merge_modes_arithmetic():
    score = torch.tensor([0.2, 0.6, 0.9]).view(1, 1, 1, 3)
    user = torch.tensor([1.0, 0.0, 0.5]).view(1, 1, 1, 3)
    torch.testing.assert_close(imp.merge_emphasis(score, user, "max", 0.8).flatten(), torch.tensor([0.8, 0.6, 0.9]))
    torch.testing.assert_close(imp.merge_emphasis(score, user, "add", 0.5).flatten(), torch.tensor([0.7, 0.6, 1.0]))
    torch.testing.assert_close(imp.merge_emphasis(score, user, "multiply", 1.0).flatten(),
                               torch.tensor([0.2, 0.0, 0.45]))
    torch.testing.assert_close(imp.merge_emphasis(score, user, "multiply", 0.5).flatten(),
                               torch.tensor([0.2, 0.3, 0.675]))
    for mode in imp.MERGE_MODES:
        torch.testing.assert_close(imp.merge_emphasis(score, user, mode, 0.0), score)
    with pytest.raises(ValueError, match="unknown merge mode 'avg'"):
        imp.merge_emphasis(score, user, "avg")


def test_merge_resizes_user_mask_of_other_size():
    score = torch.zeros(2, 1, 32, 32)
    user = torch.ones(1, 1, 8, 8)
    assert imp.merge_emphasis(score, user, "max", 1.0).min() == 1.0


# --- budget ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("levels", [2, 4, 8])
def test_budget_mean_matches_and_levels_are_quantised(budget, levels):
    g = torch.Generator().manual_seed(1)
    m = torch.rand(2, 1, 64, 64, generator=g) ** 2
    work = imp.budget_levels(m, levels, budget)
    assert work.shape == m.shape
    vals = torch.unique(work)
    torch.testing.assert_close(vals * (levels - 1), torch.round(vals * (levels - 1)))
    for i in range(2):
        assert abs(float(work[i].mean()) - budget) < 1.0 / (levels - 1) / 4 + 0.02, float(work[i].mean())


def test_budget_is_monotone_and_deterministic():
    g = torch.Generator().manual_seed(2)
    m = torch.rand(1, 1, 32, 32, generator=g)
    w = imp.budget_levels(m, 4, 0.3)
    order = torch.argsort(m.flatten())
    assert (torch.diff(w.flatten()[order]) >= 0).all()  # more important never gets less work
    torch.testing.assert_close(imp.budget_levels(m, 4, 0.3), w, rtol=0, atol=0)


def test_budget_keeps_the_most_important_pixels_at_full_work():
    """A budget below what the map asks for takes work from the least important pixels first: the most important
    ones keep all of it (a shift would lower them too, and then no region would ever get every step)."""
    g = torch.Generator().manual_seed(3)
    m = torch.rand(2, 1, 32, 32, generator=g) * 0.9
    m[..., :4, :4] = 1.0
    for budget in (0.05, 0.15, 0.3):
        w = imp.budget_levels(m, 4, budget)
        assert w[..., :4, :4].eq(1).all(), budget
        assert abs(float(w.mean()) - budget) < 0.02, (budget, float(w.mean()))
    assert imp.budget_levels(m, 4, 0.0).eq(0).all()  # no budget, no work
    painted = torch.zeros(1, 1, 32, 32)
    painted[..., :, :16] = 1.0  # half the image painted at 1: the budget still holds (a shift lowers it all)
    for budget in (0.2, 0.5 / 3):
        assert abs(float(imp.budget_levels(painted, 4, budget).mean()) - budget) <= 1 / 6 + 1e-6
    assert abs(float(imp.budget_levels(torch.ones(1, 1, 8, 8), 4, 0.3).mean()) - 1 / 3) < 1e-6


def test_budget_extremes_and_errors():
    m = torch.zeros(1, 1, 8, 8)
    assert float(imp.budget_levels(m, 4, 1.0).mean()) == 1.0  # even a blank map can be given full work
    assert float(imp.budget_levels(torch.rand(1, 1, 8, 8), 4, 0.0).mean()) == 0.0
    with pytest.raises(ValueError, match="'levels' must be at least 2"):
        imp.budget_levels(m, 1, 0.5)
    with pytest.raises(ValueError, match="'budget' must be in 0..1"):
        imp.budget_levels(m, 4, 1.5)


# --- learned scorer ------------------------------------------------------------------------------------------------
def test_learned_scorer_is_small_and_predicts_at_one_eighth():
    from devkit.random_weights import perturb

    torch.manual_seed(0)
    scorer = perturb(imp.LearnedScorer(), 0.05).eval()
    assert imp.scorer_params(scorer) <= 1_000_000
    x = torch.rand(3, 3, 96, 136)
    assert scorer(x).shape == (3, 1, 12, 17)
    m = scorer.score(x)
    assert m.shape == (3, 1, 96, 136) and 0 <= float(m.min()) and float(m.max()) <= 1
    big = scorer.score(torch.rand(1, 3, 1024, 768))  # seen at max_side 512, returned at the image size
    assert big.shape == (1, 1, 1024, 768)
    with pytest.raises(ValueError, match="NaN"):
        scorer.score(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="RGB"):
        scorer.score(torch.rand(1, 4, 32, 32))


def test_learned_scorer_save_load_is_strict(tmp_path):
    from diffugan.models.checkpoints import CheckpointError, save_safetensors

    torch.manual_seed(1)
    scorer = imp.LearnedScorer(imp.ScorerConfig(stem=8, blocks=((16, 2, 2, True), (16, 2, 2, False)))).eval()
    imp.save_scorer(scorer, tmp_path / "s.safetensors")
    back = imp.load_scorer(tmp_path / "s.safetensors")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(back(x), scorer(x), rtol=0, atol=0)
    sd = scorer.state_dict()
    sd.pop("head.bias")
    save_safetensors(tmp_path / "bad.safetensors", sd, {"format": imp.SCORER_FORMAT,
                                                        "config": scorer.config.to_json()})
    with pytest.raises(CheckpointError, match="head.bias"):
        imp.load_scorer(tmp_path / "bad.safetensors")
    save_safetensors(tmp_path / "other.safetensors", scorer.state_dict(), {"format": "something.else"})
    with pytest.raises(CheckpointError, match="not a DiffuGAN importance scorer"):
        imp.load_scorer(tmp_path / "other.safetensors")
