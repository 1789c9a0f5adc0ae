"""StyleGAN3 synthesis network ("Alias-Free Generative Adversarial Networks"), configs -T and -R.

Pure PyTorch, no CUDA extensions. `SynthesisNetwork3` takes the same constructor arguments as NVlabs'
`training/networks_stylegan3.py` `SynthesisNetwork` (so a pickle's synthesis kwargs build it) and registers
parameters and buffers under the same names and shapes, so a G_ema state dict loads with `strict=True`:

    input.{weight, transform, freqs, phases, affine.weight, affine.bias}
    L{i}_{size}_{channels}.{weight, bias, magnitude_ema, up_filter, down_filter, affine.weight, affine.bias}

(`up_filter` / `down_filter` are absent from the state dict where the layer needs no filter.) In fp32 its
images match NVlabs' to float rounding; a freshly built network designs the same low-pass filters.

Shapes: ws (N, num_ws, w_dim) with num_ws = num_layers + 2; features (N, C, H, W); images (N, img_channels,
img_resolution, img_resolution), roughly in [-1, 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .stylegan_ops import LRELU_GAIN, FullyConnectedLayer, NoiseMode, bias_act, upfirdn2d


# --------------------------------------------------------------------------------------------------------------
# Low-pass filter design (numpy, float64; the same windowed-sinc / windowed-jinc designs as NVlabs' scipy calls)
# --------------------------------------------------------------------------------------------------------------
def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """Kaiser-windowed low-pass FIR filter, normalised to unit DC gain.

    numtaps: filter length (1 means no filter: returns None). cutoff, width (transition band) and fs (sampling
    rate) share one unit. Separable designs return the 1-D taps (numtaps,), radial ones a 2-D jinc (numtaps, numtaps).
    """
    if numtaps < 1:
        raise ValueError(f"a filter needs at least one tap, got numtaps={numtaps}")
    if numtaps == 1:
        return None
    nyquist = fs / 2
    if not 0 < cutoff < nyquist:
        raise ValueError(f"low-pass cutoff {cutoff:g} must lie strictly between 0 and half the sampling rate "
                         f"({nyquist:g})")
    window = _kaiser_window(numtaps, width / nyquist)  # (numtaps,)
    offsets = np.arange(numtaps) - (numtaps - 1) / 2  # tap positions around the centre, in samples
    if radial:
        pos = offsets / fs
        r = np.hypot(pos[None, :], pos[:, None])  # (numtaps, numtaps) distance from the centre
        safe_r = np.where(r > 0, r, 1.0)
        jinc = np.where(r > 0, _bessel_j1(2 * math.pi * cutoff * safe_r) / (math.pi * safe_r), cutoff)
        taps = jinc * np.outer(window, window)
    else:
        taps = np.sinc(offsets * (cutoff / nyquist)) * window
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


def _kaiser_window(numtaps: int, width_rel: float) -> np.ndarray:
    """Kaiser window whose beta follows Kaiser's empirical design rule for the transition width (relative to
    Nyquist) that `numtaps` taps can achieve: attenuation in dB, then beta from the attenuation."""
    atten = 2.285 * (numtaps - 1) * math.pi * width_rel + 7.95
    if atten > 50:
        beta = 0.1102 * (atten - 8.7)
    elif atten > 21:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    else:
        beta = 0.0
    return np.kaiser(numtaps, beta)


def _bessel_j1(z: np.ndarray) -> np.ndarray:
    """Bessel function of the first kind, order 1, from Bessel's integral J1(z) = 1/(2 pi) * integral over
    [-pi, pi] of cos(t - z sin t) dt. The integrand is smooth and periodic, so the midpoint rule converges
    geometrically once the number of nodes exceeds |z| by a margin: accurate to ~1e-15 here."""
    z = np.asarray(z, dtype=np.float64)
    nodes = 32 + 2 * int(math.ceil(float(np.abs(z).max(initial=0.0))))
    t = (np.arange(nodes) + 0.5) * (2 * math.pi / nodes) - math.pi
    return np.cos(t - np.multiply.outer(z, np.sin(t))).mean(axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------------------------------------------
def _modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, padding: int,
                      demodulate: bool, input_gain: torch.Tensor) -> torch.Tensor:
    """Per-sample modulated convolution as one grouped conv.

    x (N, I, H, W); weight (O, I, k, k); styles (N, I); input_gain: scalar tensor; returns (N, O, H', W').
    With demodulation, weights and styles are first brought to unit RMS (this cancels out in demodulation and
    only keeps fp16 in range). NVlabs takes the styles' RMS over the whole batch, here per sample, so a
    sample's image never depends on its batch mates; the two differ only through the 1e-8 epsilon.
    """
    n, in_ch = styles.shape
    out_ch, _, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)  # (N, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    w = w * input_gain
    x = F.conv2d(x.reshape(1, n * in_ch, *x.shape[2:]), w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype),
                 padding=padding, groups=n)  # (1, N*O, H', W')
    return x.reshape(n, out_ch, *x.shape[2:])


def _filtered_lrelu(x: torch.Tensor, up_filter: torch.Tensor | None, down_filter: torch.Tensor | None,
                    bias: torch.Tensor, up: int, down: int, padding: tuple[int, int, int, int], gain: float,
                    slope: float, clamp: float | None) -> torch.Tensor:
    """Alias-free nonlinearity: bias, upsample `up`x through up_filter (padding / cropping by `padding`, in the
    upsampled domain), leaky ReLU scaled by `gain` and clamped, then filter with down_filter and keep every
    `down`-th sample. x (N, C, H, W) -> (N, C, H', W'), H' = ceil((H * up + py0 + py1 - (fu - 1) - (fd - 1)) / down)
    for filter lengths fu, fd (1 for no filter), likewise W'."""
    x = x + bias.reshape(1, -1, 1, 1)
    x = _resample(x, up_filter, up=up, padding=padding, gain=up ** 2)  # (N, C, H*up + pads - fu + 1, ...)
    x = bias_act(x, act="linear" if slope == 1 else "lrelu", alpha=slope, gain=gain, clamp=clamp)
    return _resample(x, down_filter, down=down)


def _resample(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """upfirdn2d, skipped where it would be the identity (a ToRGB layer has no filters and no resampling)."""
    if f is None and up == 1 and down == 1 and not any(padding):
        return x * gain if gain != 1 else x
    return upfirdn2d(x, f, up=up, down=down, padding=padding, gain=gain)


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------
class SynthesisInput3(nn.Module):
    """Fourier features: `channels` sinusoids of random frequency (inside a disc of radius `bandwidth`) sampled
    on a size x size grid, rotated and translated per sample by an affine map of w, then mixed by `weight`.

    `transform` (3, 3) is a user-settable inverse transform of the output image (identity by default)."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, int(size)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn(channels, 2)
        radii = freqs.norm(dim=1, keepdim=True)
        freqs = freqs / radii * (-radii.square() / 4).exp() * bandwidth  # (C, 2), all inside the band
        phases = torch.rand(channels) - 0.5  # (C,) in cycles
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (N, 4): rotation (cos, sin) and translation (x, y), up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rotate = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=1).reshape(n, 3, 3)
        translate = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(n, 3, 3)
        m = rotate @ translate @ self.transform  # (N, 3, 3): maps output-image coordinates to feature space

        phases = self.phases + (self.freqs @ m[:, :2, 2:]).squeeze(2)  # (N, C)
        freqs = self.freqs @ m[:, :2, :2]  # (N, C, 2)
        # Fade out frequencies that the user transform pushed beyond the band.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth))
        amplitudes = amplitudes.clamp(0, 1)  # (N, C)

        coords = (torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2)
        coords = coords / self.sampling_rate  # (S,) pixel centres, in units where the sampling rate is 1/pixel
        cycles = (freqs[:, :, 0, None, None] * coords[None, None, None, :]
                  + freqs[:, :, 1, None, None] * coords[None, None, :, None]
                  + phases[:, :, None, None])  # (N, C, H, W)
        x = torch.sin(cycles * (2 * math.pi)) * amplitudes[:, :, None, None]
        return torch.einsum("oc,nchw->nohw", self.weight / math.sqrt(self.channels), x)  # (N, C, H, W)


class SynthesisLayer3(nn.Module):
    """Modulated conv -> alias-free leaky ReLU (up-sample, nonlinearity, low-pass, down-sample) -> new grid.

    The ToRGB layer (is_torgb) is a 1x1 conv without demodulation, filters or nonlinearity."""

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
                 in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_sampling_rate: int, out_sampling_rate: int, in_cutoff: float, out_cutoff: float,
                 in_half_width: float, out_half_width: float, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256,
                 magnitude_ema_beta: float = 0.999):
        super().__init__()
        self.w_dim, self.is_torgb, self.use_fp16 = w_dim, is_torgb, use_fp16
        self.in_channels, self.out_channels, self.in_size, self.out_size = in_channels, out_channels, in_size, out_size
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))  # running mean square of the input (training)

        # The nonlinearity runs at a temporary rate that is an integer multiple of both grid rates.
        tmp_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.up_factor = _integer_ratio(tmp_rate, in_sampling_rate, "input")
        self.down_factor = _integer_ratio(tmp_rate, out_sampling_rate, "output")
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(up_taps, in_cutoff, 2 * in_half_width, tmp_rate))
        self.register_buffer("down_filter", design_lowpass_filter(
            down_taps, out_cutoff, 2 * out_half_width, tmp_rate,
            radial=use_radial_filters and not is_critically_sampled))

        # Pad (or crop) the upsampled signal so that exactly out_size samples remain after both filters and the
        # decimation, with sample positions centred as in the paper's symmetric convention (its Appendix C.3).
        needed = (out_size - 1) * self.down_factor + 1  # samples before decimation
        have = (in_size + self.conv_kernel - 1) * self.up_factor - (up_taps - 1) - (down_taps - 1)
        total = needed - have
        lo = (total + self.up_factor) // 2
        self.padding = (lo, total - lo, lo, total - lo)  # (x0, x1, y0, y1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, in_size, in_size) in the layer's dtype; w (N, w_dim) float32."""
        styles = self.affine(w)  # (N, in_channels)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        x = _modulated_conv2d(x, self.weight, styles, padding=self.conv_kernel - 1, demodulate=not self.is_torgb,
                              input_gain=self.magnitude_ema.rsqrt())  # (N, out_channels, H + k - 1, W + k - 1)
        x = _filtered_lrelu(x, self.up_filter, self.down_filter, self.bias.to(x.dtype), up=self.up_factor,
                            down=self.down_factor, padding=self.padding, gain=1 if self.is_torgb else LRELU_GAIN,
                            slope=1 if self.is_torgb else 0.2, clamp=self.conv_clamp)
        return x  # (N, out_channels, out_size, out_size)


def _integer_ratio(rate: float, base: int, which: str) -> int:
    ratio = int(round(rate / base))
    if ratio * base != rate:
        raise ValueError(f"the nonlinearity's sampling rate {rate:g} is not an integer multiple of the {which} "
                         f"rate {base:g}; lrelu_upsampling must be a positive integer")
    return ratio


# --------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------
class SynthesisNetwork3(nn.Module):
    """W+ -> image: Fourier-feature input, then num_layers alias-free layers whose cutoff frequency rises
    geometrically from first_cutoff to img_resolution / 2 (the last num_critical ones critically sampled), then
    ToRGB. Layer attributes are named L{i}_{size}_{channels} as in NVlabs."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, num_fp16_res: int = 4, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256,
                 magnitude_ema_beta: float = 0.999):
        super().__init__()
        if num_layers < 1 or num_critical >= num_layers:
            raise ValueError(f"StyleGAN3 needs num_layers >= 1 and num_critical < num_layers, got "
                             f"num_layers={num_layers}, num_critical={num_critical}")
        if first_cutoff <= 0:
            raise ValueError(f"first_cutoff must be positive, got {first_cutoff}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_layers, self.num_critical, self.margin_size = num_layers, num_critical, margin_size
        self.output_scale, self.num_fp16_res = output_scale, num_fp16_res
        self.num_ws = num_layers + 2  # input + layers + ToRGB

        plan = _frequency_plan(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                               first_cutoff, first_stopband, last_stopband_rel, margin_size)
        cutoffs, half_widths, rates, sizes, channels = plan
        if channels.min() < 1:
            raise ValueError(f"channel_base={channel_base} gives layers without channels; raise channel_base")
        self.input = SynthesisInput3(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_keys: list[str] = []
        for i in range(num_layers + 1):
            prev = max(i - 1, 0)
            name = f"L{i}_{int(sizes[i])}_{int(channels[i])}"
            try:
                layer = SynthesisLayer3(
                    w_dim, is_torgb=i == num_layers, is_critically_sampled=i >= num_layers - num_critical,
                    use_fp16=bool(rates[i] * 2 ** num_fp16_res > img_resolution),
                    in_channels=int(channels[prev]), out_channels=int(channels[i]),
                    in_size=int(sizes[prev]), out_size=int(sizes[i]),
                    in_sampling_rate=int(rates[prev]), out_sampling_rate=int(rates[i]),
                    in_cutoff=cutoffs[prev], out_cutoff=cutoffs[i],
                    in_half_width=half_widths[prev], out_half_width=half_widths[i],
                    conv_kernel=conv_kernel, filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
                    use_radial_filters=use_radial_filters, conv_clamp=conv_clamp,
                    magnitude_ema_beta=magnitude_ema_beta)
            except ValueError as e:
                raise ValueError(f"invalid StyleGAN3 configuration (img_resolution={img_resolution}, "
                                 f"first_cutoff={first_cutoff}), layer {name}: {e}") from None
            setattr(self, name, layer)
            self.layer_keys.append(name)

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "const", generator: torch.Generator | None = None,
                fp16: bool = False) -> torch.Tensor:
        """ws (N, num_ws, w_dim) -> image (N, img_channels, H, W) float32. StyleGAN3 has no noise inputs, so
        noise_mode and generator are accepted and ignored. fp16 runs the layers NVlabs marks use_fp16 in half
        precision, on CUDA only."""
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        rows = ws.float().unbind(dim=1)
        x = self.input(rows[0])  # (N, C0, S0, S0)
        for name, w in zip(self.layer_keys, rows[1:]):
            layer = getattr(self, name)
            half = fp16 and layer.use_fp16 and x.device.type == "cuda"
            x = layer(x.to(torch.float16 if half else torch.float32), w)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.float()  # (N, img_channels, img_resolution, img_resolution)

    def layer_names(self) -> list[str]:
        """Human names of the W+ rows, e.g. 'input', 'L0_36_512', ..., 'L14_1024_3' (for style-mixing ranges)."""
        return ["input"] + list(self.layer_keys)


def _frequency_plan(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                    first_cutoff, first_stopband, last_stopband_rel, margin_size):
    """Output cutoff f_c, transition half-width f_h, sampling rate s, grid size and channel count of each layer
    L0..L{num_layers} (arrays of num_layers + 1; the input emits entry 0, layer i reads entry i - 1, L0 entry 0).
    See the paper's section 3.2 and its Figure 4."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    progress = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)  # 0 -> 1, then held
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** progress
    stopbands = first_stopband * (last_stopband / first_stopband) ** progress
    rates = np.exp2(np.ceil(np.log2(np.minimum(2 * stopbands, img_resolution))))  # powers of two
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + 2 * margin_size
    sizes[-2:] = img_resolution  # the last layer and ToRGB work on the image grid itself
    channels = np.rint(np.minimum(channel_base / 2 / cutoffs, channel_max))
    channels[-1] = img_channels
    return cutoffs, half_widths, rates, sizes, channels
