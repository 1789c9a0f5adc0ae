"""The importance nodes' UI helpers (nodes/_ui.py): the heat-coloured preview and clicked emphasis points."""
import math
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def ui(comfy):
    pack = next(mod for name, mod in sys.modules.items() if name.endswith("custom_nodes/DiffuGAN"))
    return pack.nodes._ui


def test_ui_colorize_hits_anchor_colours_exactly(ui):
    values = ui.HEAT_ANCHORS[:, 0].view(1, 1, 1, -1)
    rgb = ui.colorize(values)  # (1,3,1,K)
    torch.testing.assert_close(rgb[0, :, 0].T, ui.HEAT_ANCHORS[:, 1:])


def test_ui_colorize_is_piecewise_linear_between_anchors(ui):
    a, b = ui.HEAT_ANCHORS[1], ui.HEAT_ANCHORS[2]
    mid = (a[0] + b[0]) / 2
    rgb = ui.colorize(mid.view(1, 1, 1, 1))[0, :, 0, 0]
    torch.testing.assert_close(rgb, (a[1:] + b[1:]) / 2)


def test_ui_overlay_opacity_endpoints(ui):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 24, generator=g)
    mask = torch.rand(2, 1, 16, 24, generator=g)
    torch.testing.assert_close(ui.heatmap_overlay(image, mask, 0.0), image)
    torch.testing.assert_close(ui.heatmap_overlay(image, mask, 1.0), ui.colorize(mask))


def test_ui_overlay_marks_important_region_red_and_rest_blue(ui):
    image = torch.full((1, 3, 32, 32), 0.5)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:16, 8:16] = 1.0
    out = ui.heatmap_overlay(image, mask, 1.0)
    hot, cold = out[0, :, 12, 12], out[0, :, 28, 28]
    assert hot[0] > 0.8 and hot[2] < 0.1  # red
    assert cold[2] > cold[0]  # blue dominates where nothing matters


def test_ui_mask_of_other_size_is_resized_and_single_mask_broadcasts(ui):
    image = torch.rand(3, 3, 40, 60)
    mask = torch.ones(1, 1, 10, 15)
    out = ui.heatmap_overlay(image, mask, 1.0)
    assert out.shape == image.shape
    torch.testing.assert_close(out, ui.colorize(torch.ones(3, 1, 40, 60)))


def test_ui_batch_mismatch_is_refused_with_a_clear_error(ui):
    with pytest.raises(ValueError, match="'importance' has batch 2 but the image has batch 3"):
        ui.heatmap_overlay(torch.rand(3, 3, 8, 8), torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ui_non_finite_inputs_are_refused(ui, bad):
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="'importance' contains 1 NaN/inf"):
        ui.heatmap_overlay(torch.rand(1, 3, 8, 8), mask)


def test_ui_opacity_out_of_range_is_refused(ui):
    with pytest.raises(ValueError, match="'opacity' must be in 0..1"):
        ui.heatmap_overlay(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), 1.5)


def test_points_parse_and_blobs(ui):
    pts = ui.parse_points('[{"x": 10, "y": 20, "radius": 8}, {"x": 50, "y": 5, "weight": 0.5}]')
    assert pts == [{"x": 10.0, "y": 20.0, "radius": 8.0, "weight": 1.0},
                   {"x": 50.0, "y": 5.0, "radius": 32.0, "weight": 0.5}]
    m = ui.points_to_mask(pts[:1], 40, 64)
    sigma2 = (8 / 2) ** 2  # sigma = radius / 2
    near = float(m[0, 0, 19, 9])  # pixel centre (9.5, 19.5), 0.71 px from the click
    assert abs(near - math.exp(-0.5 / (2 * sigma2))) < 1e-6
    ring = float(m[0, 0, 19, 17])  # centre (17.5, 19.5): 7.5 px right, 0.5 up
    assert abs(ring - math.exp(-(7.5 ** 2 + 0.25) / (2 * sigma2))) < 1e-6
    assert ui.points_to_mask([], 4, 4).sum() == 0 and ui.parse_points("  ") == []


@pytest.mark.parametrize("text,msg", [("[{x: 1}]", "not valid JSON"), ('[{"y": 1}]', "at least x and y"),
                                      ('[{"x": 1, "y": 2, "radius": -3}]', "radius > 0"), ('"abc"', "JSON list")])
def test_points_errors_are_clear(ui, text, msg):
    with pytest.raises(ValueError, match=msg):
        ui.parse_points(text)
