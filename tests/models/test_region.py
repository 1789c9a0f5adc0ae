"""models/region.py's image-space helpers: what the refiner's output is combined with."""
import pytest
import torch

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
