"""devkit.metrics: the evaluation metrics of the zoo scripts and benchmarks."""
import pytest
import torch

from devkit import metrics


def test_edge_f1_counts_matches_within_the_tolerance():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 8, 2:14] = 1  # a horizontal line of 12 pixels
    same = target.clone()
    shifted = torch.roll(target, 1, dims=2)  # one pixel down: matched at tolerance 1, not at 0
    half = target.clone()
    half[:, :, 8, 8:] = 0  # precision 1; recall 7/12 (the 1 px tolerance reaches one pixel past the end)
    assert metrics.edge_f1(same, target).tolist() == [1.0, 1.0]
    assert metrics.edge_f1(shifted, target, tolerance=1).tolist() == [1.0, 1.0]
    assert metrics.edge_f1(shifted, target, tolerance=0).tolist() == [0.0, 0.0]
    assert float(metrics.edge_f1(half, target)[0]) == pytest.approx(2 * (7 / 12) / (1 + 7 / 12))
    assert metrics.edge_f1(torch.zeros_like(target), target).tolist() == [0.0, 0.0]


def test_spearman_with_ties_matches_the_definition():
    a = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    assert metrics.average_ranks(a).tolist() == [1.0, 1.0, 1.0, 3.0, 4.0, 5.0]
    assert metrics.spearman(a, a * 10 + 1) == pytest.approx(1.0)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a, torch.ones(6)) == 0.0
    # Pearson of the average ranks, by hand: ranks of b = [5, 4, 3, 2, 1, 0]
    b = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    ra, rb = torch.tensor([1.0, 1, 1, 3, 4, 5]), torch.tensor([5.0, 4, 3, 2, 1, 0])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    assert metrics.spearman(a, b) == pytest.approx(float((ra * rb).sum() / (ra.norm() * rb.norm())))
