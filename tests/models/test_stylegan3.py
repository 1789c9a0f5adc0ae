"""Pure-torch tests of models/stylegan3.py (StyleGAN3 -T / -R synthesis) on tiny configurations.

Parity with NVlabs' networks_stylegan3.py itself is checked outside the repo (that code may not be vendored);
the layer names below are the ones NVlabs gives these configurations.
"""
import math

import pytest
import torch

from diffugan.models import stylegan as sg
from diffugan.models.stylegan3 import SynthesisNetwork3, design_lowpass_filter

TINY = dict(w_dim=8, img_resolution=16, img_channels=3, channel_base=256, channel_max=16, num_layers=4,
            num_critical=1, margin_size=2)
CONFIGS = {"T": TINY, "R": {**TINY, "conv_kernel": 1, "use_radial_filters": True}}
NVLABS_NAMES = ["L0_20_16", "L1_20_16", "L2_20_16", "L3_16_16", "L4_16_3"]


def make(kind: str, seed: int = 0) -> SynthesisNetwork3:
    torch.manual_seed(seed)
    net = SynthesisNetwork3(**CONFIGS[kind]).eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial values where a fresh network has zeros / identities
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
        net.input.affine.weight.normal_(0, 0.5)
    return net


def ws_for(net: SynthesisNetwork3, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, net.num_ws, net.w_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["T", "R"])
def test_output_shape_dtype_and_num_ws(kind):
    net = make(kind)
    assert net.num_ws == TINY["num_layers"] + 2
    img = net(ws_for(net, 2))
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.std() > 0


@pytest.mark.parametrize("kind", ["T", "R"])
def test_names_and_shapes_follow_nvlabs(kind):
    net = make(kind)
    assert net.layer_names() == ["input"] + NVLABS_NAMES
    sd = net.state_dict()
    assert {k for k in sd if k.startswith("input.")} == {
        "input.weight", "input.transform", "input.freqs", "input.phases", "input.affine.weight", "input.affine.bias"}
    assert sd["input.freqs"].shape == (16, 2) and sd["input.weight"].shape == (16, 16)
    k = 1 if kind == "R" else 3
    assert sd["L1_20_16.weight"].shape == (16, 16, k, k) and sd["L4_16_3.weight"].shape == (3, 16, 1, 1)
    assert sd["L1_20_16.magnitude_ema"].shape == ()
    # Radial (2-D) down filters only in -R and only where not critically sampled; ToRGB has no filters at all.
    assert sd["L2_20_16.down_filter"].ndim == (2 if kind == "R" else 1) and sd["L3_16_16.down_filter"].ndim == 1
    assert "L4_16_3.up_filter" not in sd and "L4_16_3.down_filter" not in sd
    assert len(sd) == 39
    SynthesisNetwork3(**CONFIGS[kind]).load_state_dict(sd, strict=True)


@pytest.mark.parametrize("kind", ["T", "R"])
def test_deterministic_and_batch_independent(kind):
    net = make(kind)
    ws = ws_for(net, 3)
    a, b = net(ws), net(ws, noise_mode="random", generator=torch.Generator().manual_seed(5))  # no noise in SG3
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(net(ws[1:2]), a[1:2], rtol=0, atol=1e-5)
    torch.testing.assert_close(make(kind)(ws), a, rtol=0, atol=0)  # same seed, same network


@pytest.mark.parametrize("kind", ["T", "R"])
def test_fresh_filters_are_normalised_symmetric_lowpass(kind):
    net = make(kind)
    filters = [b for name, b in net.named_buffers() if name.endswith("_filter")]
    assert len(filters) == 2 * TINY["num_layers"]
    for f in filters:
        assert abs(f.sum().item() - 1) < 1e-5  # unit DC gain
        torch.testing.assert_close(f, f.flip(list(range(f.ndim))), rtol=0, atol=1e-7)
        if f.ndim == 2:
            torch.testing.assert_close(f, f.T, rtol=0, atol=1e-7)  # radially symmetric
    # Nyquist gain of a 1-D filter (alternating sum) is far below its DC gain.
    f = net.L0_20_16.up_filter
    assert abs((f * (-1.0) ** torch.arange(f.numel())).sum()) < 0.05


def test_filter_design_matches_scipy_when_available():
    signal = pytest.importorskip("scipy.signal")
    special = pytest.importorskip("scipy.special")
    import numpy as np

    for numtaps, cutoff, width, fs in [(12, 2.0, 4.5, 16), (24, 5.04, 6.1, 64), (10, 7.3, 2.2, 32)]:
        ours = design_lowpass_filter(numtaps, cutoff, width, fs)
        ref = signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        torch.testing.assert_close(ours, torch.as_tensor(ref, dtype=torch.float32), rtol=0, atol=1e-7)
        # Radial: jinc(2 cutoff r) with the same Kaiser window in both directions.
        x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
        r = np.hypot(*np.meshgrid(x, x))
        beta = signal.kaiser_beta(signal.kaiser_atten(numtaps, width / (fs / 2)))
        ref2 = special.j1(2 * math.pi * cutoff * r) / (math.pi * r) * np.outer(*[np.kaiser(numtaps, beta)] * 2)
        ours2 = design_lowpass_filter(numtaps, cutoff, width, fs, radial=True)
        torch.testing.assert_close(ours2, torch.as_tensor(ref2 / ref2.sum(), dtype=torch.float32), rtol=0,
                                   atol=1e-7)
    assert design_lowpass_filter(1, 2.0, 1.0, 8) is None


@pytest.mark.parametrize("overrides, message", [
    ({"img_resolution": 2}, r"invalid StyleGAN3 configuration \(img_resolution=2.*cutoff"),
    ({"num_layers": 2, "num_critical": 2}, "num_critical < num_layers"),
    ({"first_cutoff": 0}, "first_cutoff must be positive"),
    ({"lrelu_upsampling": 1.5}, "lrelu_upsampling must be a positive integer"),
    ({"channel_base": 8}, "without channels"),
])
def test_invalid_configuration_is_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        SynthesisNetwork3(**{**TINY, **overrides})


def test_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match="superres"):
        SynthesisNetwork3(**TINY, superres=2)


def test_fp16_flag_is_a_no_op_on_cpu():
    net = make("R")
    ws = ws_for(net, 2)
    assert any(getattr(net, n).use_fp16 for n in net.layer_names()[1:])
    out = net(ws, fp16=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(ws), rtol=0, atol=0)


def test_wrong_ws_shape_is_explained():
    net = make("T")
    with pytest.raises(ValueError, match=r"ws must have shape \(N, 6, 8\)"):
        net(torch.zeros(1, 5, 8))


def test_output_scale_and_user_transform():
    net = make("T")
    ws = ws_for(net, 1)
    base = net(ws)
    net.output_scale = 0.5
    torch.testing.assert_close(net(ws), base * 2, rtol=1e-6, atol=1e-6)
    net.input.transform.copy_(torch.tensor([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 1]]))  # translate the input
    assert not torch.allclose(net(ws), base * 2)


def test_builds_inside_the_generator():
    cfg = sg.StyleGANConfig("stylegan3", z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                            synthesis_kwargs={k: v for k, v in CONFIGS["R"].items()
                                              if k not in ("w_dim", "img_resolution", "img_channels")})
    torch.manual_seed(0)
    G = sg.Generator(cfg).eval()
    assert G.num_ws == 6 and G.mapping.num_layers == 2
    with torch.no_grad():
        assert G(sg.z_from_seeds([0, 1], 8)).shape == (2, 3, 16, 16)
