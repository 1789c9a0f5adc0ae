"""Importance nodes inside the real ComfyUI (in-process)."""
from pathlib import Path

import pytest
import torch


def test_analytic_node_outputs_a_stock_mask(run_node):
    image = torch.full((2, 40, 60, 3), 0.5)
    image[:, :, :30] = torch.rand(2, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    mask = run_node("DiffuGANImportanceAnalytic", image=image, smoothing=1.0).args[0]
    assert mask.shape == (2, 40, 60) and mask.dtype == torch.float32
    assert mask[:, 5:-5, 3:25].mean() > mask[:, 5:-5, 35:57].mean() + 0.3


def test_merge_node_points_and_painted_mask(run_node):
    score = torch.zeros(1, 32, 48)
    painted = torch.zeros(1, 16, 24)
    painted[:, :, :2] = 1.0  # left edge, half resolution
    out = run_node("DiffuGANImportanceMerge", importance=score, mode="max", strength=1.0, user_mask=painted,
                   points='[{"x": 40, "y": 16, "radius": 4}]').args[0]
    assert out.shape == (1, 32, 48)
    assert out[0, 16, 40] > 0.9 and out[0, 16, 1] > 0.9 and out[0, 16, 24] < 0.01
    with pytest.raises(ValueError, match="DiffuGAN Merge Emphasis: 'points' is not valid JSON"):
        run_node("DiffuGANImportanceMerge", importance=score, mode="max", strength=1.0, points="[{")


def test_budget_node(run_node):
    m = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(3))
    levels = run_node("DiffuGANImportanceBudget", importance=m, levels=4, budget=0.3).args[0]
    assert levels.shape == (2, 32, 32)
    assert set(torch.unique(levels * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert abs(float(levels.mean()) - 0.3) < 0.05


def test_learned_node_scores_with_a_file_from_its_folder(comfy, run_node, tmp_path):
    import folder_paths

    from diffugan.models import importance as imp
    from devkit.random_weights import perturb

    torch.manual_seed(0)
    scorer = perturb(imp.LearnedScorer(), 0.05).eval()
    folder = folder_paths.get_folder_paths("diffugan_importance")[0]
    imp.save_scorer(scorer, Path(folder) / "test-scorer.safetensors")
    image = torch.rand(2, 48, 80, 3, generator=torch.Generator().manual_seed(1))
    mask = run_node("DiffuGANImportanceLearned", image=image, scorer_name="test-scorer.safetensors").args[0]
    assert mask.shape == (2, 48, 80) and mask.dtype == torch.float32
    torch.testing.assert_close(mask, scorer.score(image.movedim(-1, 1))[:, 0])
    with pytest.raises(ValueError, match="diffugan_importance"):
        run_node("DiffuGANImportanceLearned", image=image, scorer_name="missing.safetensors")
    with pytest.raises(ValueError, match="DiffuGAN Importance \\(Learned\\): 'image' contains 768 NaN"):
        run_node("DiffuGANImportanceLearned", image=torch.full((1, 16, 16, 3), float("nan")),
                 scorer_name="test-scorer.safetensors")
