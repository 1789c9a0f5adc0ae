"""Region-adaptive refinement of a DiT, pure PyTorch: important regions get more denoising steps than the rest,
and the transformer really computes less there.

One refinement run (`RegionRefinement`) is built from
- per-token step counts from an importance / work-level map (`token_step_counts`), and which sampler steps
  evaluate each token (`evaluation_schedule`);
- a transformer pass over a subset of tokens (`forward_tokens`): each sample row's tokens packed into one sequence
  (`TokenPacking`) for the per-token layers, attention over every token's keys and values from a per-row cache
  (`KVCache`, token-major);
- forecasts between a token's evaluations (`TokenForecast`): its clean-latent prediction x0 and, as attention
  context for the others, its keys and values, linear in sigma from its last two evaluations.

Non-destructive refinement (`keep_coarse`): a refined image with the coarse content (colours, layout) of its
draft or input put back, so only the detail finer than the input's own resolution comes from the refiner.

The network itself is models/dit.py; the FLOP counts models/flops.py. The ComfyUI side (a sampler that creates a
RegionRefinement when sampling starts and drops it when it ends) is nodes/dit.py.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .dit import DiT, Control
from .flops import transformer_flops

def evaluation_schedule(counts: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Which of the `total_steps` steps evaluate each token: a token with n steps is evaluated at steps
    floor(j * K / n), j = 0..n-1 (evenly spaced, always including step 0). (N, T) -> (N, K, T) bool.

    Between evaluations a token's clean-latent prediction (x0) is forecast from its last two evaluations (or, with
    forecast 0, held: then with the Euler sampler it follows exactly an n-step Euler schedule, the sub-sequence of
    the K sigmas at its evaluation steps); all tokens stay at the same noise level at every step (no seams in
    noise level across region borders). See RegionRefinement."""
    if counts.min() < 0 or counts.max() > total_steps:
        raise ValueError(f"step counts must be in 0..{total_steps}, got {int(counts.min())}..{int(counts.max())}")
    k = torch.arange(total_steps, device=counts.device)
    j_max = counts.clamp_min(1)[:, None, :]  # (N, 1, T)
    # step i is an evaluation step of a token with n steps iff some j < n has floor(j*K/n) == i, i.e. iff
    # ceil(i*n/K) < ceil((i+1)*n/K) (the count of evaluation points up to i grows at i)
    before = torch.div(k[None, :, None] * j_max + total_steps - 1, total_steps, rounding_mode="floor")
    after = torch.div((k[None, :, None] + 1) * j_max + total_steps - 1, total_steps, rounding_mode="floor")
    return (after > before) & (counts[:, None, :] > 0)


def token_pixels(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Token mask (R, T) bool -> pixel mask (R, 1, gh*p, gw*p)."""
    gh, gw = grid
    m = mask.view(mask.shape[0], 1, gh, gw)
    return m.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def token_step_counts(level_map: torch.Tensor, grid: tuple[int, int], total_steps: int, min_steps: int,
                      border: int = 0) -> torch.Tensor:
    """Importance / work-level map (N, 1, H, W) in 0..1 at any size -> per-token step counts (N, T):
    min_steps + round(level * (total_steps - min_steps)) of each token's mean level, so the transformer's work
    follows the map's mean (a Budget node's budget is the share of the steps above min_steps that is spent).
    `border` > 0 grows every token's level to the largest within that many tokens (region edges get the higher
    count, at a cost)."""
    if not 0 <= min_steps <= total_steps:
        raise ValueError(f"min_steps {min_steps} must be between 0 and the number of steps ({total_steps})")
    m = level_map.float().clamp(0, 1)
    if m.shape[-2] % grid[0] == 0 and m.shape[-1] % grid[1] == 0:  # e.g. image -> tokens (/16)
        level = F.interpolate(m, size=grid, mode="area")
    else:
        level = F.interpolate(m, size=grid, mode="bilinear", antialias=True, align_corners=False)
    if border > 0:
        level = F.max_pool2d(level, 2 * border + 1, stride=1, padding=border)
    return (min_steps + torch.round(level * (total_steps - min_steps))).long().flatten(1)


def step_index(sigmas: torch.Tensor, sigma: float) -> int:
    """The step of a sampler's schedule `sigmas` (K + 1, ending at 0) that `sigma` belongs to: the last schedule
    sigma >= it, so intermediate evaluations of multi-stage samplers count to their step."""
    idx = (sigmas[:-1].float().cpu() >= sigma * (1 - 1e-5)).nonzero()
    return int(idx.max()) if len(idx) else 0


class TokenPacking:
    """Each row's active tokens packed into one sequence (P = their total count) for the per-token layers, so rows
    with different token sets share one batch without padding; only attention's queries are laid out per row,
    each row's list padded to the longest (L) by repeating its first entry.

    From a (R, T) bool mask of the tokens each row computes (row-major, tokens ascending): `row`, `token` (P,) each
    entry's row and token; `flat` (P,) its index in the flattened (R x T) tokens; `padded` (R, L) the entry at each
    slot of each row's padded list; `unpad` (P,) each entry's index in the flattened (R x L) padded lists."""

    def __init__(self, mask: torch.Tensor):
        self.row, self.token = mask.nonzero(as_tuple=True)
        self.flat = self.row * mask.shape[1] + self.token
        counts = mask.sum(1)
        start = counts.cumsum(0) - counts  # (R,) each row's first entry
        slot = torch.arange(int(counts.max()) if mask.numel() else 0, device=mask.device)
        self.padded = start[:, None] + torch.where(slot < counts[:, None], slot, torch.zeros_like(slot))
        self.unpad = self.row * len(slot) + torch.arange(len(self.token), device=mask.device) - start[self.row]

    def take(self, per_token: torch.Tensor) -> torch.Tensor:
        """(R, T, D) -> the packed entries (P, 1, D)."""
        return per_token.flatten(0, 1).index_select(0, self.flat)[:, None]


class KVCache:
    """Every block's keys and values of R sample rows, token-major: `kv` (R, T, 2 x depth, H, dh), ordered k0, v0, k1,
    v1, ..., so one token's whole context is one contiguous slice (cheap to copy per token). A dense pass of
    forward_tokens fills it; a subset pass overwrites its tokens' slices in place and attends over all of it."""

    def __init__(self, kv: torch.Tensor | None = None):
        self.kv = kv

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A block's keys and values as attention takes them, (R, H, T, dh) views."""
        return self.kv[:, :, 2 * layer].transpose(1, 2), self.kv[:, :, 2 * layer + 1].transpose(1, 2)


def forward_tokens(model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, style: torch.Tensor | None,
                   active: torch.Tensor | None, cache: KVCache, control: Control | None = None) -> torch.Tensor:
    """The DiT on some tokens only: `active` a (R, T) bool mask (each row its own tokens, at least one) or (A,)
    token indices (the same for every row), whose keys/values are written into `cache` in place; None = all tokens,
    which fills `cache`. x (R, C, H, W) -> (R, C_out, H, W); outside the active tokens the output is zero (not
    computed). With `active` None this is exactly `DiT.forward`: both run the same block maths
    (DiTBlock.modulated), only the attention core differs."""
    gh, gw = model.grid(x)
    tokens = model.embed(x)  # (R, T, D); the patch embedding is cheap and keeps positions simple
    c = model.conditioning(t, y, style)
    residuals = control(tokens, c, (gh, gw)) if control is not None else None  # on all tokens: it has its own budget
    pack = None
    if active is not None:
        if active.dtype != torch.bool:
            active = torch.zeros(gh * gw, dtype=torch.bool, device=x.device).index_fill(0, active, True)
        pack = TokenPacking(active.expand(x.shape[0], -1))
        tokens = pack.take(tokens)  # (P, 1, D)
    dense_kv = []
    for layer, block in enumerate(model.blocks):
        mod = block.adaLN_modulation(c)  # (R, 6D)
        if pack is not None:
            mod = mod.index_select(0, pack.row)  # (P, 6D): each packed entry is its own row of one token
        tokens = block.modulated(tokens, mod, _cached_attention(block.attn, pack, cache, layer, dense_kv))
        if residuals is not None and layer < len(residuals):
            tokens = tokens + (residuals[layer] if pack is None else pack.take(residuals[layer]))
    if pack is None:
        cache.kv = torch.stack([z.transpose(1, 2) for z in dense_kv], 2)  # (R, T, 2 x depth, H, dh)
        return model.unpatchify(model.final_layer(tokens, c), gh, gw)
    final = model.final_layer
    out = final.modulated(tokens, final.adaLN_modulation(c).index_select(0, pack.row))[:, 0]  # (P, p*p*C_out)
    full = out.new_zeros(x.shape[0], gh * gw, out.shape[-1])
    full.view(-1, out.shape[-1]).index_copy_(0, pack.flat, out)
    return model.unpatchify(full, gh, gw)


def _cached_attention(attn, pack: TokenPacking | None, cache: KVCache, layer: int, dense_kv: list) -> Callable:
    """The attention core for forward_tokens: qkv -> attended values (before `proj`). All tokens (`pack` None):
    plain self-attention that also appends the layer's keys and values to `dense_kv`. Packed tokens (P, 1, 3D):
    their keys and values are written into the rows' cache in place, and each row's queries, padded to the longest
    row, attend over its whole cache."""

    def dense(qkv: torch.Tensor) -> torch.Tensor:
        q, keys, values = attn.split(qkv)  # (R, H, T, dh)
        dense_kv.extend((keys, values))
        return attn.attend(q, keys, values)

    def packed(qkv: torch.Tensor) -> torch.Tensor:
        qkv = qkv[:, 0]  # (P, 3D)
        d, heads = qkv.shape[1] // 3, attn.num_heads
        rows, tokens = cache.kv.shape[:2]
        per_token = cache.kv.view(rows * tokens, -1, d)  # (R x T, 2 x depth, D)
        per_token[:, 2 * layer].index_copy_(0, pack.flat, qkv[:, d:2 * d])
        per_token[:, 2 * layer + 1].index_copy_(0, pack.flat, qkv[:, 2 * d:])
        q = qkv[:, :d].index_select(0, pack.padded.flatten())  # (R x L, D): each row's tokens, padded
        q = q.view(pack.padded.shape[0], pack.padded.shape[1], heads, d // heads).transpose(1, 2)  # (R, H, L, dh)
        out = attn.attend(q, *cache.layer(layer))  # (R, L, D)
        return out.flatten(0, 1).index_select(0, pack.unpad)[:, None]  # (P, 1, D)

    return dense if pack is None else packed


class TokenForecast:
    """One sample row's last two evaluations of some per-token quantity (x0 pixels (C, H, W), or every block's keys
    and values (T, 2 x depth, H, dh)), with the sigma of each token's last two evaluations (inf: not yet evaluated).

    Between its evaluations a token's value is forecast (`forecast` 1, the default): linearly in sigma from its
    last two evaluations, last + d (last - prev), d = (sigma_last - sigma) / (sigma_prev - sigma_last) clamped to
    0..1, the first-order feature forecast of TaylorSeer-style DiT caching. `forecast` 0 holds the last value."""

    def __init__(self, values: torch.Tensor, sigma: float, tokens: int, copy: bool = True):
        # updated in place: its own copy unless the caller hands the values over (`copy` False, e.g. a fresh cache)
        self.last = values.clone() if copy else values
        self.prev = self.last
        self.s_last = torch.full((tokens,), sigma, device=values.device)
        self.s_prev = torch.full((tokens,), math.inf, device=values.device)

    def weight(self, sigma: float, forecast: int) -> torch.Tensor:
        """(T,) forecast weight d of each token at `sigma` (0: hold; tokens with one evaluation hold)."""
        known = torch.isfinite(self.s_prev)
        if forecast == 0 or not bool(known.any()):
            return torch.zeros_like(self.s_last)
        gap = (self.s_prev - self.s_last).where(known, torch.ones_like(self.s_last))
        return ((self.s_last - sigma) / gap).clamp(0, 1) * known

    def at(self, d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The values forecast with per-token weights d, already shaped to broadcast against them (into `out`, or a
        new tensor): last + d (last - prev) in one pass, exactly `last` where d is 0."""
        return torch.lerp(self.prev, self.last, 1 + d, out=out)

    def record(self, values: torch.Tensor, mask: torch.Tensor | None, token_mask: torch.Tensor, sigma: float,
               token_dim: int | None = None, copy: bool = True):
        """New evaluations of the tokens set in `token_mask` (T,): where `mask` (broadcasting against the values) is
        set, or, for values laid out per token along `token_dim` (keys/values), the slices of those tokens only
        (copies in proportion to the tokens evaluated, not to all). `copy` False: values handed over, not copied."""
        if bool(token_mask.all()):
            self.prev, self.last = self.last, values.clone() if copy else values
        else:
            if self.prev is self.last:
                self.prev = self.last.clone()
            if token_dim is None:
                torch.where(mask, self.last, self.prev, out=self.prev)
                torch.where(mask, values, self.last, out=self.last)
            else:
                idx = token_mask.nonzero().squeeze(1)
                self.prev.index_copy_(token_dim, idx, self.last.index_select(token_dim, idx))
                self.last.index_copy_(token_dim, idx, values.index_select(token_dim, idx))
        self.s_prev = torch.where(token_mask, self.s_last, self.s_prev)
        self.s_last = torch.where(token_mask, torch.full_like(self.s_last, sigma), self.s_last)


class RegionRefinement:
    """One region-adaptive refinement run: which tokens each step evaluates, each sample row's evaluations
    (clean-latent prediction x0 and each block's keys/values, with their sigmas), and the counted transformer
    FLOPs (actual vs dense). Create one when sampling starts, call it for every model evaluation, drop it at the end.

    It speaks the DiT's own ε-parametrisation under the VP schedule, as ComfyUI's EPS model sampling does: the
    model input is xc = x / sqrt(sigma^2 + 1) of the noisy latent x, and x0 = x - sigma ε. A call takes xc and returns
    ε for every token: computed for the tokens whose step it is, (x - x0) / sigma from the forecast x0 for the rest.

    Rows are identified by `row_keys` (a cond/uncond chunk id and the image index), so the conditional and the
    unconditional pass of classifier-free guidance keep separate caches, and each image of a batch its own map.
    A token not evaluated at a step gets its x0 and, as attention context for the evaluated tokens, its keys and
    values forecast from its last two evaluations (`forecast` 1; 0 holds the last ones: then an n-step token
    follows exactly an n-step Euler schedule). Tokens with 0 steps keep x0 = the draft: the sampler returns them
    unchanged. All tokens share the sampler's noise level at every step (no noise seams at region borders).
    """

    def __init__(self, model: DiT, counts: torch.Tensor, sigmas: torch.Tensor, draft: torch.Tensor | None,
                 dense_every: int = 0, forecast: int = 1):
        if forecast not in (0, 1):
            raise ValueError(f"forecast must be 0 (hold) or 1 (linear), got {forecast}")
        self.model, self.sigmas = model, sigmas.detach().float().cpu()
        self.total_steps = len(sigmas) - 1
        self.counts = counts  # (B, T)
        self.schedule = evaluation_schedule(counts.cpu(), self.total_steps)  # (B, K, T)
        self.draft = draft
        self.dense_every = dense_every
        self.forecast = forecast
        self.x0: dict = {}  # row key -> TokenForecast of x0 (C, H, W)
        self.kv: dict = {}  # row key -> TokenForecast of every block's keys and values (T, 2 x depth, H, dh)
        self.flops = 0
        self.dense_flops = 0
        self.evaluated_tokens = 0
        self.done = torch.zeros_like(self.schedule)  # (B, K, T): the scheduled evaluations that did run
        self.total_tokens = 0

    def __call__(self, xc: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None,
                 style: torch.Tensor | None, row_keys: list, images: list[int],
                 control_for: Callable[[list[int]], Control | None] | None = None) -> torch.Tensor:
        """ε (R, C, H, W) for the model inputs xc at noise level `sigma` (R,) and timesteps t, evaluating the
        transformer only on the tokens scheduled at this step. `control_for(rows)` gives a ControlNet hook for
        those rows (or None)."""
        s = float(sigma.max())
        if s <= 0:
            raise ValueError("region-adaptive refinement: a model evaluation at sigma 0")
        step = step_index(self.sigmas, s)
        model, cfg = self.model, self.model.config
        c_lat = cfg.in_channels
        grid = model.grid(xc)
        total = grid[0] * grid[1]
        sig = sigma.float().view(-1, 1, 1, 1)
        x = xc[:, :c_lat].float() * (sig ** 2 + 1).sqrt()  # the noisy latent (EPS model input scaling undone)
        image_rows = torch.tensor(images) % self.schedule.shape[0]
        update = self.schedule[image_rows, step].to(xc.device)  # (R, T): the tokens each row evaluates now
        # Rows evaluating every token run as one batch (all rows at the first step, so a uniform map batches exactly
        # like the stock path); rows evaluating a subset as one other batch, each row with its own tokens (packed,
        # see TokenPacking); rows with no token due at this step not at all.
        dense_step = self.dense_every > 0 and step % self.dense_every == 0
        dense, subset = [], []
        for r, k in enumerate(row_keys):
            if k not in self.kv or dense_step or bool(update[r].all()):
                dense.append(r)
            elif bool(update[r].any()):
                subset.append(r)
            if k not in self.x0:  # before its first evaluation a row's x0 is the draft
                draft = self.draft[images[r] % self.draft.shape[0]].to(x) if self.draft is not None else x[r] * 0
                self.x0[k] = TokenForecast(draft, math.inf, total)
        # x0 of the tokens not evaluated now: forecast (or held), as ε for this x
        x0 = torch.stack([ev.at(token_pixels(ev.weight(s, self.forecast)[None], grid, cfg.patch_size)[0])
                          for ev in (self.x0[k] for k in row_keys)])  # (R, C, H, W)
        out = (x - x0) / sig
        for rows in (dense, subset):
            if not rows:
                continue
            sel, keys, upd = torch.tensor(rows, device=xc.device), [row_keys[r] for r in rows], update[rows]
            if rows is dense:
                mask, cache, active = None, KVCache(), [total] * len(rows)
            else:
                mask, active = upd, upd.sum(1).tolist()
                buf = xc.new_empty((len(keys),) + self.kv[keys[0]].last.shape)  # (R, T, 2 x depth, H, dh)
                for i, k in enumerate(keys):
                    self._context(k, s, out=buf[i])  # the subset pass overwrites its tokens' slices in place
                cache = KVCache(buf)
            eps = forward_tokens(model, xc[sel], t[sel], None if y is None else y[sel],
                                 None if style is None else style[sel], mask, cache,
                                 None if control_for is None else control_for(rows))[:, :c_lat].float()
            fresh = x[sel] - sig[sel] * eps
            upd_px = token_pixels(upd, grid, cfg.patch_size)  # (R, 1, H, W)
            out[sel] = torch.where(upd_px, eps, out[sel])
            computed = torch.ones_like(upd) if mask is None else upd
            for i, k in enumerate(keys):
                if k not in self.kv:
                    self.kv[k] = TokenForecast(cache.kv[i], s, total, copy=False)  # each call's cache is new
                else:
                    self.kv[k].record(cache.kv[i], None, computed[i], s, token_dim=0, copy=False)
                self.x0[k].record(fresh[i], upd_px[i], upd[i], s)
            self.flops += sum(transformer_flops(cfg, a, total) for a in active)
            self.evaluated_tokens += sum(active)
            self.done[image_rows[rows], step] |= upd.cpu()  # a wrapper around the sampler may skip whole steps
        self.dense_flops += len(row_keys) * transformer_flops(cfg, total, total)
        self.total_tokens += len(row_keys) * total
        return out  # float32: ComfyUI computes the denoised latent in float32 from it

    def _context(self, key, sigma: float, out: torch.Tensor) -> torch.Tensor:
        """A row's keys and values of every block at `sigma` (T, 2 x depth, H, dh: k0, v0, k1, v1, ...): the
        evaluated ones are overwritten by the subset pass, the others serve as context (forecast or held)."""
        ev = self.kv[key]
        return ev.at(ev.weight(sigma, self.forecast).view(-1, 1, 1, 1), out)

    def untouched_pixels(self, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) bool: latent pixels of tokens with 0 steps (their output must equal the draft)."""
        return token_pixels(self.counts == 0, grid, self.model.config.patch_size)

    def summary(self) -> str:
        return (f"{self.total_steps} steps, {100 * self.evaluated_tokens / max(self.total_tokens, 1):.1f}% of token "
                f"evaluations, transformer FLOPs {self.flops:.3g} of {self.dense_flops:.3g} dense "
                f"({self.dense_flops / max(self.flops, 1):.2f}x fewer)")


def coarse(x: torch.Tensor, px: int) -> torch.Tensor:
    """What an image holds at `px` pixels a side: down to px (antialiased bilinear) and back up (bicubic)."""
    small = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)


def keep_coarse(image: torch.Tensor, reference: torch.Tensor, px: int) -> torch.Tensor:
    """`image` (N, C, H, W, in 0..1) with the coarse content of `reference` (its own size, batch N or 1): the
    reference's content at `px` pixels a side plus the image's detail above it (image - coarse(image)), clamped.
    With px the reference's real resolution (a 64 px draft, a 48 px upscale), the result keeps everything the
    reference knew and takes from the image only what the reference could not hold."""
    if reference.shape[-2:] != image.shape[-2:]:
        reference = F.interpolate(reference, size=image.shape[-2:], mode="bicubic", align_corners=False)
    return (coarse(reference, px) + image - coarse(image, px)).clamp(0, 1)


def add_refinement(original: torch.Tensor, refined: torch.Tensor, reconstruction: torch.Tensor,
                   keep_colour: bool = False) -> torch.Tensor:
    """What a latent refiner changed, put onto the original pixels: original + (refined - reconstruction), clamped
    to 0..1. `refined` is the decode of the refined latent, `reconstruction` the decode of the latent the refiner
    started from (the original's VAE round trip), all (N, C, H, W) in 0..1 of one size (`original` batch N or 1).
    The VAE's own reconstruction error (its colour drift and texture on pictures it does not know) is in both
    decodes and cancels; only the refiner's change reaches the result.

    keep_colour: add only the change's luminance (BT.601 Y), the same amount to R, G and B, so the original's
    colours (the Cb and Cr of YCbCr) stay as they were and the refinement brings light and shade (edges, outlines,
    shading) but no hue, as super-resolution methods that refine Y alone do. RGB images only."""
    if not original.shape[-2:] == refined.shape[-2:] == reconstruction.shape[-2:]:
        raise ValueError(f"sizes differ: original {tuple(original.shape[-2:])}, refined {tuple(refined.shape[-2:])}, "
                         f"reconstruction {tuple(reconstruction.shape[-2:])}")
    change = refined - reconstruction
    if keep_colour:
        from kornia.color import rgb_to_grayscale

        if change.shape[1] != 3:
            raise ValueError(f"keep_colour needs RGB images (3 channels), but these have {change.shape[1]}; turn "
                             "keep_colour off")
        change = rgb_to_grayscale(change).expand_as(change)
    return (original + change).clamp(0, 1)
