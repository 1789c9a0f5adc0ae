"""The reference img2img sampler of the zoo scripts, benchmarks and tests (not part of the node pack, which samples
through ComfyUI): Euler on DiT's discrete schedule with classifier-free guidance, the same update as ComfyUI's
Euler on a DiffuGAN DiT MODEL, optionally region-adaptive (models/region.py)."""
from __future__ import annotations

import torch

from diffugan.models import dit, region


def img2img_schedule(steps: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas and matching discrete timesteps of DiT's linear-β schedule: `steps` evenly spaced timesteps from
    strength * 999 down, then sigma 0 (a plain 'normal'-style img2img schedule)."""
    acp = torch.cumprod(1 - dit.linear_betas(), 0)
    ts = torch.linspace(strength * (dit.NUM_TIMESTEPS - 1), 0, steps + 1)[:-1]
    sig = ((1 - acp) / acp).sqrt()
    sigmas = torch.cat([torch.stack([_interp(sig, t) for t in ts]), torch.zeros(1)]).float()
    return sigmas, ts.float()


def _interp(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    lo, hi = int(t.floor()), int(t.ceil())
    w = float(t - lo)
    return ((1 - w) * values[lo].log() + w * values[hi].log()).exp()


def euler_img2img(model: dit.DiT, draft, labels, sigmas, ts, cfg, noise, counts=None, dense_every: int = 0,
                  style=None, forecast: int = 1):
    """Reference Euler img2img without ComfyUI (benchmarks, training scripts): from `draft` (SD1-scaled latents)
    noised to sigmas[0] with `noise`, classifier-free guidance `cfg` against the null class (rows: cond batch, then
    uncond batch), the same update as ComfyUI's Euler on this model. With per-token step `counts` (N, T) the
    region-adaptive refinement evaluates each token only at its steps (`dense_every` as the sampler node's;
    `forecast` as RegionRefinement's). A `style` (N, style_dim) conditions the cond rows only, as DiffuGAN DiT
    Conditioning does (dense sampling only). Returns (latent, the RegionRefinement or None)."""
    n = draft.shape[0]
    if style is not None and counts is not None:
        raise ValueError("euler_img2img: style with per-token counts is not supported")
    state = region.RegionRefinement(model, counts, sigmas, draft, dense_every, forecast) if counts is not None else None
    x = draft + noise * sigmas[0]
    y = torch.cat([labels, torch.full_like(labels, model.config.null_class)]) if cfg != 1 else labels
    keys = [(c, j) for c in range(2 if cfg != 1 else 1) for j in range(n)]
    images = [j for _, j in keys]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        xx = torch.cat([x, x]) if cfg != 1 else x
        sig = s.expand(xx.shape[0])
        xc = xx / (s ** 2 + 1).sqrt()
        t = ts[i].expand(xx.shape[0])
        if state is None and style is not None:
            eps = model(xc[:n], t[:n], y[:n], style)
            if cfg != 1:
                eps = torch.cat([eps, model(xc[n:], t[n:], y[n:])])
            den = xx - eps[:, : x.shape[1]] * s
        elif state is None:
            eps = model(xc, t, y)[:, : x.shape[1]]
            den = xx - eps * s
        else:
            den = xx - state(xc, t, sig, y, None, keys, images) * s
        if cfg != 1:
            cond, uncond = den.chunk(2)
            den = uncond + cfg * (cond - uncond)
        x = x + (x - den) / s * (sigmas[i + 1] - s)
    if state is not None:  # 0-step tokens: exactly the draft (as the ComfyUI sampler returns them)
        x = torch.where(state.untouched_pixels(model.grid(x)), draft, x)
    return x, state
