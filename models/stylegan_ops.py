"""StyleGAN ops and the equalized-learning-rate linear layer, shared by the StyleGAN2 (stylegan.py) and StyleGAN3
(stylegan3.py) networks."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NoiseMode = Literal["const", "random", "none"]
LRELU_GAIN = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------------------
# Ops (exact pure-torch equivalents of NVlabs' upfirdn2d / bias_act / conv2d_resample reference paths)
# --------------------------------------------------------------------------------------------------------------
def setup_filter(taps, normalize: bool = True, gain: float = 1.0, separable: bool | None = None) -> torch.Tensor:
    """FIR filter as used by `upfirdn2d`: 1-D taps become a 2-D outer product unless long (>= 8 taps)."""
    f = torch.as_tensor(taps if taps is not None else 1.0, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f * (gain ** (f.ndim / 2))


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding=0,
              flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop, for negative padding), FIR-filter, downsample by decimation.

    padding: int, (px, py) or (px0, px1, py0, py1) in the upsampled domain. f: (fh, fw) or separable (taps,).
    Computed without materialising the zero-inserted signal or the discarded samples: upsampling is a transposed
    convolution with stride `up`, downsampling a strided convolution. Equal to `upfirdn2d_reference` up to float
    rounding (tested); the reference spends up² more work on zeros and down² more on dropped samples.
    """
    if not FAST_RESAMPLING:
        return upfirdn2d_reference(x, f, up, down, padding, flip_filter, gain)
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    px0, px1, py0, py1 = _padding4(padding)
    k = (f * (gain ** (f.ndim / 2))).to(device=x.device, dtype=x.dtype)
    if flip_filter:  # the reference correlates with the flipped filter, i.e. convolves with f; flip_filter undoes it
        k = k.flip(list(range(k.ndim)))
    if k.ndim == 2:
        return _fir(x, k, (up, up), (down, down), (px0, px1, py0, py1))
    x = _fir(x, k.view(1, -1), (1, up), (1, down), (px0, px1, 0, 0))  # along the width
    return _fir(x, k.view(-1, 1), (up, 1), (down, 1), (0, 0, py0, py1))  # along the height


FAST_RESAMPLING = True  # False: use the naive reference path (benchmarks compare the two)


def _fir(x: torch.Tensor, k: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
         pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Depthwise: zero-insert by `up`, pad/crop by `pad`, convolve with k (kh, kw), keep every `down`-th sample."""
    (uy, ux), (dy, dx), (px0, px1, py0, py1) = up, down, pad
    c, (kh, kw) = x.shape[1], k.shape
    if uy == ux == 1:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
        return F.conv2d(x, k.flip([0, 1])[None, None].expand(c, 1, kh, kw), stride=(dy, dx), groups=c)
    h, w = x.shape[-2:]
    # Full convolution of the zero-inserted signal with k: (N, C, (h-1)*uy + kh, (w-1)*ux + kw)
    y = F.conv_transpose2d(x, k[None, None].expand(c, 1, kh, kw), stride=(uy, ux), groups=c)
    out_h, out_w = h * uy + py0 + py1 - kh + 1, w * ux + px0 + px1 - kw + 1
    sy, sx = kh - 1 - py0, kw - 1 - px0  # output sample o is full-convolution sample o + s (zero outside)
    y = F.pad(y, [max(-sx, 0), max(sx + out_w - y.shape[3], 0), max(-sy, 0), max(sy + out_h - y.shape[2], 0)])
    y = y[:, :, max(sy, 0): max(sy, 0) + out_h, max(sx, 0): max(sx, 0) + out_w]
    return y[:, :, ::dy, ::dx] if (dy, dx) != (1, 1) else y


def upfirdn2d_reference(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding=0,
                        flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """The naive definition of upfirdn2d, literally: zero insertion, pad, full convolution, decimation."""
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    px0, px1, py0, py1 = _padding4(padding)
    n, c, h, w = x.shape
    if up > 1:  # zero insertion
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # conv2d correlates; a FIR filter convolves
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].expand(c, 1, 1, -1), groups=c)  # rows
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, -1, 1), groups=c)  # columns
    return x[:, :, ::down, ::down] if down > 1 else x


def _padding4(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x upsampling with the FIR filter f, keeping the signal centred (as in StyleGAN2's skip path)."""
    fw = f.shape[-1]
    p = ((fw + up - 1) // 2, (fw - up) // 2)
    return upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up * up)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None, alpha: float = 0.2) -> torch.Tensor:
    """Bias (over dim 1), activation ('linear' | 'lrelu' | 'relu'), gain (default: sqrt 2 for lrelu/relu), clamp."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r} (supported: linear, lrelu, relu)")
    if gain is None:
        gain = 1.0 if act == "linear" else LRELU_GAIN
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                    groups: int = 1) -> torch.Tensor:
    """Convolution with optional 2x upsampling through a transposed convolution followed by the FIR filter f.
    The only resampling StyleGAN2's generator needs (up in {1, 2}, no down).

    up == 1 correlates (F.conv2d). up == 2 applies the weights as a true transposed convolution, without the
    spatial flip that correlation would need: NVlabs' layers do exactly this (their `flip_weight = up == 1`), so
    the trained 3x3 kernels of up-sampling layers only reproduce their images this way."""
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    out_ch, in_per_group, kh, kw = w.shape
    fw = f.shape[-1]
    # Padding in the upsampled domain, as for upfirdn2d, then shifted by the transposed convolution's footprint.
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    pxt = max(min(-px0, -px1), 0)
    # conv_transpose2d wants (in, out/groups, kh, kw) per group.
    wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
    wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=up, padding=pxt, groups=groups)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, px0 + pxt, px1 + pxt), gain=up * up)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, fused: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated convolution as one grouped convolution (one group per sample), or with `fused=False`
    as NVlabs trains it: scale the input by the styles, one shared convolution, scale the output by the
    demodulation coefficients (the same result; faster for a training batch, whose weights need gradients).

    x (N, I, H, W); weight (O, I, k, k); styles (N, I); noise broadcastable to the output; returns (N, O, H', W').
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalise against fp16 overflow (cancels under demodulation)
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
        if demodulate:
            d = ((weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
            x = x * d.to(x.dtype).reshape(n, out_ch, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)  # (N, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype), f=resample_filter, up=up,
                        padding=padding, groups=n)
    x = x.reshape(n, out_ch, *x.shape[2:])
    return x.add_(noise.to(x.dtype)) if noise is not None else x


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalized learning rate: weights stored / lr_multiplier, scaled at run time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, weight_init: float = 1.0, bias_init=0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        init = torch.as_tensor(np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]).copy())
        self.bias = nn.Parameter(init / lr_multiplier) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)
