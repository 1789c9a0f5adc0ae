"""models/region.py's image-space helpers: what the refiner's output is combined with."""
import pytest
import torch
from kornia.color import rgb_to_grayscale

from diffugan.models import region


def test_add_refinement_carries_only_the_refiners_change_onto_the_original():
    g = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 16, 16, generator=g) * 0.8 + 0.1
    reconstruction = (original + 0.05 * torch.randn(original.shape, generator=g)).clamp(0, 1)  # a VAE's round trip
    change = 0.05 * torch.randn(original.shape, generator=g)
    torch.testing.assert_close(region.add_refinement(original, reconstruction, reconstruction), original)
    out = region.add_refinement(original, reconstruction + change, reconstruction)
    torch.testing.assert_close(out, (original + change).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1
    assert region.add_refinement(original[:1], reconstruction, reconstruction).shape == original.shape
    with pytest.raises(ValueError, match=r"sizes differ: original \(8, 8\), refined \(16, 16\)"):
        region.add_refinement(original[..., ::2, ::2], reconstruction, reconstruction)


def test_add_refinement_keep_colour_adds_light_and_shade_but_no_hue():
    g = torch.Generator().manual_seed(1)
    original = torch.rand(2, 3, 16, 16, generator=g) * 0.6 + 0.2
    reconstruction = (original + 0.05 * torch.randn(original.shape, generator=g)).clamp(0, 1)
    change = 0.05 * torch.randn(original.shape, generator=g)
    out = region.add_refinement(original, reconstruction + change, reconstruction, keep_colour=True)
    # each pixel gets the change's luminance (BT.601), the same on R, G and B
    y = (change * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(out, (original + y).clamp(0, 1))
    torch.testing.assert_close(rgb_to_grayscale(out - original), y)
    # so the original's chroma (B - Y, R - Y) is untouched
    for c in (0, 2):
        torch.testing.assert_close(out[:, c:c + 1] - rgb_to_grayscale(out),
                                   original[:, c:c + 1] - rgb_to_grayscale(original))
    # a change of hue alone (a grey mouth turning green at constant luminance) adds nothing
    hue = torch.zeros_like(original)
    hue[:, 1] = 0.1
    hue -= rgb_to_grayscale(hue)
    kept = region.add_refinement(original, reconstruction + hue, reconstruction, keep_colour=True)
    torch.testing.assert_close(kept, original)
    assert (region.add_refinement(original, reconstruction + hue, reconstruction) - original).abs().max() > 0.05
    with pytest.raises(ValueError, match="keep_colour needs RGB images"):
        region.add_refinement(original[:, :1], reconstruction[:, :1], reconstruction[:, :1], keep_colour=True)
