"""Pure-torch tests of models/importance.py (no ComfyUI)."""
import pytest
import torch

from diffugan.models import importance as imp


def test_colorize_hits_anchor_colours_exactly():
    values = imp.HEAT_ANCHORS[:, 0].view(1, 1, 1, -1)
    rgb = imp.colorize(values)  # (1,3,1,K)
    torch.testing.assert_close(rgb[0, :, 0].T, imp.HEAT_ANCHORS[:, 1:])


def test_colorize_is_piecewise_linear_between_anchors():
    a, b = imp.HEAT_ANCHORS[1], imp.HEAT_ANCHORS[2]
    mid = (a[0] + b[0]) / 2
    rgb = imp.colorize(mid.view(1, 1, 1, 1))[0, :, 0, 0]
    torch.testing.assert_close(rgb, (a[1:] + b[1:]) / 2)


def test_overlay_opacity_endpoints():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 24, generator=g)
    mask = torch.rand(2, 1, 16, 24, generator=g)
    torch.testing.assert_close(imp.heatmap_overlay(image, mask, 0.0), image)
    torch.testing.assert_close(imp.heatmap_overlay(image, mask, 1.0), imp.colorize(mask))


def test_overlay_marks_important_region_red_and_rest_blue():
    image = torch.full((1, 3, 32, 32), 0.5)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:16, 8:16] = 1.0
    out = imp.heatmap_overlay(image, mask, 1.0)
    hot, cold = out[0, :, 12, 12], out[0, :, 28, 28]
    assert hot[0] > 0.8 and hot[2] < 0.1  # red
    assert cold[2] > cold[0]  # blue dominates where nothing matters


def test_mask_of_other_size_is_resized_and_single_mask_broadcasts():
    image = torch.rand(3, 3, 40, 60)
    mask = torch.ones(1, 1, 10, 15)
    out = imp.heatmap_overlay(image, mask, 1.0)
    assert out.shape == image.shape
    torch.testing.assert_close(out, imp.colorize(torch.ones(3, 1, 40, 60)))


def test_batch_mismatch_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="'importance' has batch 2 but the image has batch 3"):
        imp.heatmap_overlay(torch.rand(3, 3, 8, 8), torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(bad):
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="'importance' contains 1 NaN/inf"):
        imp.heatmap_overlay(torch.rand(1, 3, 8, 8), mask)


def test_opacity_out_of_range_is_refused():
    with pytest.raises(ValueError, match="'opacity' must be in 0..1"):
        imp.heatmap_overlay(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), 1.5)
