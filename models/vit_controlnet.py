"""Adaptive ViT ControlNet for the DiT refiner (pure PyTorch).

Design (PixArt-δ's ControlNet-Transformer, made adaptive):
- The control image (an edge map in pixels, any size; it is resized to the token grid) is cut into patches of
  `patch_size * vae_factor` pixels, one per DiT token, embedded, and given the DiT's own resolution-agnostic sin-cos
  position embedding.
- The control branch is a copy of the DiT's first N blocks. Its input is the DiT's token embeddings plus a
  zero-initialised projection of the control tokens; after each of its blocks a zero-initialised linear projection
  is added to the output of the corresponding DiT block. A fresh ControlNet therefore changes nothing.
- Adaptive:
  * token budget: the branch runs on k = budget x tokens tokens only, spent by priority (importance, optionally
    mixed with the control image's edge density), and its cost falls with k (linear layers linearly, attention
    quadratically). Budget 1 is the dense path itself. Two ways to spend k:
      - plain (`coarse_tokens` False): the top-k tokens; the others are skipped and inject nothing;
      - mixed resolution (`coarse_tokens` True, an adaptive ViT): the grid is cut into 2x2 blocks of tokens. A block
        the budget can afford at full resolution (the highest-priority ones) is processed as its 4 tokens; every
        other block as ONE merged token (its 4 DiT tokens averaged, its 2x2-token patch of the control image
        embedded at once, its output projected to 4 residuals, one per covered token). Each split costs 3 tokens.
        So from a budget of 1/4 up every token receives control (coarser where priority is low); below 1/4 the
        lowest-priority blocks are skipped. Merged tokens start as the mean of their 4 tokens (embedding) and copy
        the plain residual to all 4 (projection), then are trained.
  * over steps (the control image is fixed and the residuals change slowly with the noise level): the dense branch
    every n-th sampler step, its residuals reused between (`ResidualReuse`), or each step one interleaved group of
    the budget's k tokens, the others keeping their last residuals (`RotatingBudget`).
  * layer scale: a learned gain per layer times the user's strength, optionally modulated per token by importance
    and raised where edges are dense.
Strength 0 returns no residuals at all, so the DiT runs exactly as without the ControlNet.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ck
from .dit import DiT, DiTBlock, sincos_pos_embed
from .flops import block_flops

SAFETENSORS_FORMAT = "diffugan.vit_controlnet.v1"


@dataclass
class ControlNetConfig:
    hidden_size: int
    num_heads: int
    depth: int  # number of DiT blocks copied into the control branch
    patch_size: int  # the DiT's patch size in latent pixels
    base_depth: int  # depth of the DiT it belongs to
    mlp_ratio: float = 4.0
    hint_channels: int = 3
    vae_factor: int = 8  # image pixels per latent pixel
    coarse_tokens: bool = False  # mixed-resolution token budget (2x2-merged tokens where priority is low)

    @property
    def hint_patch(self) -> int:
        return self.patch_size * self.vae_factor


@dataclass
class ControlSettings:
    """What a user sets when applying the ControlNet."""

    strength: float = 1.0
    budget: float = 1.0  # tokens the control branch processes, as a fraction of the DiT's tokens
    importance_modulation: float = 0.0  # 0: same strength everywhere; 1: strength x importance per token
    edge_priority: float = 0.0  # 0: tokens chosen by importance; 1: by edge density of the control image
    edge_gain: float = 0.0  # extra strength where edges are dense: x (1 + edge_gain * density)


class StepResiduals:
    """The ControlNet's residuals of one sampling run, kept across its steps per row set (`key`: which rows,
    cond/uncond, shapes) as (step, residuals), for the temporal budgets below. The Apply node makes a fresh one when
    sampling starts and drops it when sampling ends; step 0 also drops entries of an earlier run (other row sets
    start at their step 0 too)."""

    def __init__(self):
        self._entries: dict = {}

    def _entry(self, key, step: int):
        if step == 0:
            self._entries = {k: e for k, e in self._entries.items() if e[0] == 0}
        return self._entries.get(key)


class ResidualReuse(StepResiduals):
    """A temporal budget: the ControlNet's residuals are computed at every `every`-th sampler step and reused at
    the steps between (the control image does not change, and its residuals change slowly with the noise level),
    so the branch costs about 1/every. Step 0 and a step before the last computed one always compute; every=1
    computes at every step."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"reuse steps must be at least 1, got {every}")
        super().__init__()
        self.every = every
        self.computed = 0  # residual computations, for tests and benchmarks

    def __call__(self, key, step: int, compute):
        entry = self._entry(key, step)
        if entry is None or step == 0 or step < entry[0] or step - entry[0] >= self.every:
            self.computed += 1
            entry = self._entries[key] = (step, compute())
        return entry[1]


class RotatingBudget(StepResiduals):
    """The token budget spent over sampler steps. Each step the branch processes k = budget x T tokens as plain
    tokens, taken in turn: the tokens in 2x2-stride order (`spread_order`) cut into groups of k, one group a step,
    so each group spans the whole image and each token is refreshed every T / k steps. A `fixed` share of k can go
    to each row's highest-priority tokens (importance and/or edge density, as the token budget ranks them) at every
    step instead, the rest of k still in turn over the other tokens. A token not processed at a step keeps the
    residuals of the last step that processed it, and step 0 of a run processes every token, so after it a step
    costs about budget x the dense branch. (On the zoo a fixed share did not pay: edge F1 over the image fell as it
    grew, and within the top tokens it gained no more than the noise between image sets: Apply (Advanced)'s
    rotation_top_share defaults to 0, and benchmarks/bench_vit_controlnet.py --over-steps-fixed measures it.)"""

    def __init__(self, budget: float, fixed: float = 0.0):
        if not 0 < budget <= 1:
            raise ValueError(f"budget must be in (0, 1], got {budget}")
        if not 0 <= fixed <= 1:
            raise ValueError(f"the fixed share must be in [0, 1], got {fixed}")
        super().__init__()
        self.budget, self.fixed = budget, fixed
        self.computed_tokens = 0  # tokens processed, for tests and benchmarks

    def choose(self, priority: torch.Tensor, grid: tuple[int, int], step: int) -> torch.Tensor:
        """(N, T) bool: the tokens processed at `step` (> 0) for rows of this (N, T) priority; every row gets as
        many."""
        n, t = priority.shape
        k = budget_tokens(self.budget, t)
        top_n = round(self.fixed * k)
        chosen = torch.zeros(n, t, dtype=torch.bool, device=priority.device)
        chosen.scatter_(1, priority.topk(top_n, dim=1).indices, True)
        turn_n = k - top_n
        if turn_n:
            order = spread_order(grid, priority.device)
            rest = ~chosen[:, order]  # the other tokens, in spread order
            group = (rest.cumsum(1) - 1) // turn_n
            groups = -(-(t - top_n) // turn_n)
            chosen[:, order] |= rest & (group == (step - 1) % groups)
        return chosen

    def __call__(self, key, step: int, priority: torch.Tensor, grid: tuple[int, int], compute):
        """Residuals at `step`; compute(only) runs the branch on the tokens `only` (N, k) of each row as plain
        tokens (all of them on a full step, which is the dense branch)."""
        entry = self._entry(key, step)
        if entry is not None and step == entry[0]:
            return entry[1]
        if entry is None or step == 0 or step < entry[0] or entry[1] is None:
            chosen = torch.ones_like(priority, dtype=torch.bool)
        else:
            chosen = self.choose(priority, grid, step)
        only = chosen.nonzero()[:, 1].view(len(chosen), -1)
        self.computed_tokens += only.numel()
        res = compute(only)
        if res is not None and not bool(chosen.all()):
            res = [torch.where(chosen[:, :, None], new, old) for new, old in zip(res, entry[1])]
        self._entries[key] = (step, res)
        return res


class ViTControlNet(nn.Module):
    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = c = config
        self.hint_embed = nn.Conv2d(c.hint_channels, c.hidden_size, kernel_size=c.hint_patch, stride=c.hint_patch)
        self.before_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.after_proj = nn.ModuleList(nn.Linear(c.hidden_size, c.hidden_size) for _ in range(c.depth))
        self.layer_gain = nn.Parameter(torch.ones(c.depth))
        w = self.hint_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.hint_embed.bias)
        for layer in [self.before_proj, *self.after_proj]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if c.coarse_tokens:
            self.hint_embed_coarse = nn.Conv2d(c.hint_channels, c.hidden_size, kernel_size=2 * c.hint_patch,
                                               stride=2 * c.hint_patch)
            self.after_proj_coarse = nn.ModuleList(nn.Linear(c.hidden_size, 4 * c.hidden_size)
                                                   for _ in range(c.depth))
            self.init_coarse_from_fine()

    @torch.no_grad()
    def init_coarse_from_fine(self) -> None:
        """Merged tokens as the plain ones would see them: the control embedding of a 2x2 block = the mean of its 4
        token embeddings, and each layer's 4 residuals = copies of the plain projection."""
        self.hint_embed_coarse.weight.copy_(self.hint_embed.weight.repeat(1, 1, 2, 2) / 4)
        self.hint_embed_coarse.bias.copy_(self.hint_embed.bias)
        for fine, coarse in zip(self.after_proj, self.after_proj_coarse):
            coarse.weight.copy_(fine.weight.repeat(4, 1))
            coarse.bias.copy_(fine.bias.repeat(4))

    @classmethod
    def from_dit(cls, dit: DiT, depth: int, hint_channels: int = 3, coarse_tokens: bool = False) -> "ViTControlNet":
        """A fresh ControlNet for `dit`: its first `depth` blocks copied, projections at zero."""
        d = dit.config
        if not 1 <= depth <= d.depth:
            raise ValueError(f"control depth {depth} must be between 1 and the DiT's depth {d.depth}")
        net = cls(ControlNetConfig(d.hidden_size, d.num_heads, depth, d.patch_size, d.depth, d.mlp_ratio,
                                   hint_channels, coarse_tokens=coarse_tokens))
        for src, dst in zip(dit.blocks, net.blocks):
            dst.load_state_dict(src.state_dict())
        return net.to(next(dit.parameters()).dtype)

    def with_coarse_tokens(self) -> "ViTControlNet":
        """This ControlNet with mixed-resolution tokens added (merged tokens initialised from its plain ones)."""
        net = type(self)(ControlNetConfig(**(asdict(self.config) | {"coarse_tokens": True})))
        missing, unexpected = net.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(("hint_embed_coarse", "after_proj_coarse")) for k in missing)
        net.init_coarse_from_fine()
        return net.to(self.layer_gain.dtype)

    def check_fits(self, dit: DiT) -> None:
        """Refuse a DiT this ControlNet was not made for, naming what differs."""
        c, d = self.config, dit.config
        wrong = [f"{name} {mine} vs {theirs}" for name, mine, theirs in [
            ("hidden size", c.hidden_size, d.hidden_size), ("heads", c.num_heads, d.num_heads),
            ("patch size", c.patch_size, d.patch_size), ("depth", c.base_depth, d.depth),
            ("mlp ratio", c.mlp_ratio, d.mlp_ratio)] if mine != theirs]
        if wrong:
            raise ValueError("this ControlNet was made for another DiT (ControlNet vs DiT: " + ", ".join(wrong)
                             + "); use a ControlNet trained for this DiT")

    # --- inputs -------------------------------------------------------------------------------------------------
    def prepare_hint(self, hint: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Control image (N, C, H, W) in 0..1, any size -> (N, hint_channels, gh*P, gw*P), P = pixels per token.
        Grey or RGB(A) inputs are matched to the channels the ControlNet was trained with."""
        c = self.config.hint_channels
        if hint.shape[1] == 4:
            hint = hint[:, :3]
        if hint.shape[1] != c:
            hint = hint.mean(1, keepdim=True).expand(-1, c, -1, -1) if hint.shape[1] in (1, 3) else None
            if hint is None:
                raise ValueError(f"the control image must have 1, 3 or 4 channels (the ControlNet uses {c})")
        size = (grid[0] * self.config.hint_patch, grid[1] * self.config.hint_patch)
        if tuple(hint.shape[-2:]) != size:
            hint = F.interpolate(hint.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return hint

    def edge_density(self, hint: torch.Tensor) -> torch.Tensor:
        """Prepared hint -> (N, T): mean edge intensity in each token's patch, 0..1."""
        p = self.config.hint_patch
        return F.avg_pool2d(hint.float().mean(1, keepdim=True), p).flatten(1).clamp(0, 1)

    def select(self, priority: torch.Tensor, grid: tuple[int, int], budget: float
               ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """How the budget is spent, per image: (tokens (N, a) processed at full resolution, sorted; 2x2 blocks
        (N, m) processed as one merged token, sorted, or None for a plain ControlNet), with a + m <= k; None when
        the budget covers every token (the dense path)."""
        n, t = priority.shape
        k = budget_tokens(budget, t)
        if k >= t:
            return None
        if not self.config.coarse_tokens:
            return priority.topk(k, dim=1).indices.sort(dim=1).values, None
        children = block_children(grid, priority.device)  # (B, 4), t where a block sticks out of the grid
        inside = children < t
        padded = torch.cat([priority.float(), priority.new_zeros(n, 1, dtype=torch.float)], 1)
        block_priority = padded[:, children].sum(-1) / inside.sum(-1)  # mean priority of each block (N, B)
        blocks_n = len(children)
        if k <= blocks_n:  # merged tokens only, the lowest-priority blocks skipped
            return priority.new_zeros(n, 0, dtype=torch.long), block_priority.topk(k, 1).indices.sort(1).values
        whole = inside.all(-1)
        split_n = min((k - blocks_n) // 3, int(whole.sum()))  # each split block costs 3 more tokens
        split = block_priority.masked_fill(~whole, -math.inf).topk(split_n, 1).indices
        is_split = torch.zeros(n, blocks_n, dtype=torch.bool, device=priority.device).scatter(1, split, True)
        merged = (~is_split).nonzero()[:, 1].view(n, blocks_n - split_n)  # row-major: every row has as many
        fine = children[split].flatten(1).sort(1).values
        return fine, merged

    # --- the branch ---------------------------------------------------------------------------------------------
    def per_token(self, hint: torch.Tensor, settings: ControlSettings, importance: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(priority, scale), each (N, T), for a prepared hint (N, ...): which tokens the budget goes to first
        (importance mixed with edge density by `edge_priority`; without an importance map, edge density: a uniform
        map would rank nothing) and each token's strength."""
        density = self.edge_density(hint)
        imp = torch.ones_like(density) if importance is None else importance.to(density).expand_as(density)
        ep = settings.edge_priority
        priority = density if importance is None else (1 - ep) * imp + ep * density
        scale = settings.strength * (1 - settings.importance_modulation + settings.importance_modulation * imp)
        return priority, scale * (1 + settings.edge_gain * density)

    def residuals(self, tokens: torch.Tensor, c: torch.Tensor, hint: torch.Tensor, grid: tuple[int, int],
                  settings: ControlSettings, importance: torch.Tensor | None = None,
                  only: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """Per-layer residuals (N, T, D) to add to the outputs of the DiT's first `depth` blocks, or None when the
        strength is 0. tokens: the DiT's embedded tokens (N, T, D); c: its adaLN conditioning (N, D); hint: prepared
        control image (N or 1, C, gh*P, gw*P); importance: (N or 1, T) in 0..1 or None (uniform); `only`: (k,) or
        (N, k) sorted tokens to process as plain tokens instead of the budget's choice (the others get zeros)."""
        if settings.strength == 0:
            return None
        n, t, d = tokens.shape
        hint = hint.to(tokens.dtype).expand(n, -1, -1, -1) if hint.shape[0] == 1 else hint.to(tokens.dtype)
        if hint.shape[0] != n:
            raise ValueError(f"the control image batch ({hint.shape[0]}) does not match the latent batch ({n}); "
                             "give one control image or one per image")
        priority, scale = self.per_token(hint, settings, importance)
        layout = self.select(priority, grid, settings.budget) if only is None else (only.expand(n, -1), None)
        if layout is not None and layout[1] is not None:
            return self._mixed_residuals(tokens, c, hint, grid, scale, *layout)
        idx = None if layout is None else layout[0]

        pos = sincos_pos_embed(d, grid[0], grid[1]).to(tokens.device, tokens.dtype)
        if idx is None:
            control = self.hint_embed(hint).flatten(2).transpose(1, 2) + pos  # (N, T, D)
            h = tokens + self.before_proj(control)
        else:  # only the processed tokens' patches are embedded
            p = self.config.hint_patch
            patches = _take(F.unfold(hint, p, stride=p).transpose(1, 2), idx)  # (N, k, C*p*p), the conv's layout
            control = F.linear(patches, self.hint_embed.weight.flatten(1), self.hint_embed.bias) + pos[idx]
            h = _take(tokens, idx) + self.before_proj(control)
            scale = scale.gather(1, idx)
            gather = idx.unsqueeze(-1).expand(-1, -1, d)
        out = []
        for i, (block, proj) in enumerate(zip(self.blocks, self.after_proj)):
            h = block(h, c)
            r = proj(h) * (self.layer_gain[i] * scale).unsqueeze(-1).to(h.dtype)
            if idx is not None:
                r = tokens.new_zeros(n, t, d).scatter(1, gather, r)
            out.append(r)
        return out

    def _mixed_residuals(self, tokens, c, hint, grid, scale, fine, merged) -> list[torch.Tensor]:
        """The branch on a mixed-resolution token set: `fine` tokens (N, a) as they are, `merged` 2x2 blocks
        (N, m) as one token each (see the module's docstring). Only the processed patches are embedded."""
        n, t, d = tokens.shape
        p, a, m = self.config.hint_patch, fine.shape[1], merged.shape[1]
        children = block_children(grid, tokens.device)  # (B, 4)
        count = (children < t).sum(-1, keepdim=True).to(tokens.dtype)  # tokens of the grid in each block
        pos = sincos_pos_embed(d, grid[0], grid[1]).to(tokens.device, tokens.dtype)
        pos_blocks = torch.cat([pos, pos.new_zeros(1, d)])[children].sum(1) / count  # (B, D)
        pooled = torch.cat([tokens, tokens.new_zeros(n, 1, d)], 1)[:, children].sum(2) / count  # (N, B, D)

        patches = F.unfold(hint, p, stride=p).transpose(1, 2)  # (N, T, C*p*p), the conv's weight layout
        bh, bw = -(-grid[0] // 2), -(-grid[1] // 2)
        padded = F.pad(hint, (0, 2 * bw * p - hint.shape[-1], 0, 2 * bh * p - hint.shape[-2]))
        block_patches = F.unfold(padded, 2 * p, stride=2 * p).transpose(1, 2)  # (N, B, C*4p*p)
        w_f, w_c = self.hint_embed.weight.flatten(1), self.hint_embed_coarse.weight.flatten(1)
        control = torch.cat([F.linear(_take(patches, fine), w_f, self.hint_embed.bias) + pos[fine],
                             F.linear(_take(block_patches, merged), w_c, self.hint_embed_coarse.bias)
                             + pos_blocks[merged]], 1)
        h = torch.cat([_take(tokens, fine), _take(pooled, merged)], 1) + self.before_proj(control)

        covered = children[merged].flatten(1)  # (N, 4m): the tokens each merged token writes, t = outside the grid
        scale = torch.cat([scale, scale.new_zeros(n, 1)], 1)
        scale_f, scale_c = scale.gather(1, fine), scale.gather(1, covered)
        out = []
        for i, (block, proj, proj_c) in enumerate(zip(self.blocks, self.after_proj, self.after_proj_coarse)):
            h = block(h, c)
            r_f = proj(h[:, :a]) * (self.layer_gain[i] * scale_f).unsqueeze(-1).to(h.dtype)
            r_c = proj_c(h[:, a:]).reshape(n, 4 * m, d) * (self.layer_gain[i] * scale_c).unsqueeze(-1).to(h.dtype)
            r = tokens.new_zeros(n, t + 1, d)
            r.scatter_(1, fine.unsqueeze(-1).expand(-1, -1, d), r_f)
            r.scatter_(1, covered.unsqueeze(-1).expand(-1, -1, d), r_c)  # the spare row t collects what is outside
            out.append(r[:, :t])
        return out

    def flops(self, grid: tuple[int, int], budget: float, plain_tokens: int | None = None) -> int:
        """Counted FLOPs of the control branch on a token grid at a budget (patch embedding, projections, blocks);
        with `plain_tokens`, on exactly that many plain tokens (residuals' `only`)."""
        c = self.config
        t = grid[0] * grid[1]
        layout = (self.select(torch.zeros(1, t), grid, budget) if plain_tokens is None
                  else (torch.zeros(1, plain_tokens), None))
        embed_one = 2 * c.hint_channels * c.hint_patch ** 2 * c.hidden_size
        d2 = 2 * c.hidden_size ** 2
        modulation = c.depth * 6 * d2  # each block's adaLN (per image, not per token)
        if layout is None or layout[1] is None:  # dense, or plain top-k (only their patches embedded)
            k = t if layout is None else layout[0].shape[1]
            return k * (embed_one + d2) + c.depth * (block_flops(c, k, k) + k * d2) + modulation
        a, m = layout[0].shape[1], layout[1].shape[1]
        return ((a + 4 * m) * embed_one + (a + m) * d2
                + c.depth * (block_flops(c, a + m, a + m) + a * d2 + m * 4 * d2) + modulation)


def block_children(grid: tuple[int, int], device=None) -> torch.Tensor:
    """The token grid cut into 2x2 blocks: (blocks, 4) token indices of each block's (0,0), (0,1), (1,0), (1,1)
    tokens, row-major; gh*gw where a block of an odd-sized grid sticks out."""
    gh, gw = grid
    by, bx = torch.meshgrid(torch.arange(0, gh, 2, device=device), torch.arange(0, gw, 2, device=device),
                            indexing="ij")
    yy = by.reshape(-1, 1) + torch.tensor([0, 0, 1, 1], device=device)
    xx = bx.reshape(-1, 1) + torch.tensor([0, 1, 0, 1], device=device)
    return torch.where((yy < gh) & (xx < gw), yy * gw + xx, gh * gw)


def budget_tokens(budget: float, tokens: int) -> int:
    """k = budget x tokens, rounded up (at least 1): how many tokens a budget in (0, 1] buys."""
    return max(1, math.ceil(budget * tokens - 1e-9))


def spread_order(grid: tuple[int, int], device=None) -> torch.Tensor:
    """(T,) the tokens of a grid in 2x2-stride order: every (even row, even column) token, then (even, odd), (odd,
    even), (odd, odd), each in raster order; any run of it is spread over the whole image."""
    gh, gw = grid
    yy, xx = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    return torch.argsort(((yy % 2) * 2 + xx % 2).flatten() * gh * gw + torch.arange(gh * gw, device=device))


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (N, T, D) at idx (N, k) -> (N, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------------------------------------------
# Edges: the control images, and how well an image follows them
# --------------------------------------------------------------------------------------------------------------
def canny_edges(image: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """Binary Canny edges (kornia) of (N, 3 or 1, H, W) images in 0..1 -> (N, 1, H, W) in {0, 1}."""
    import kornia

    if low >= high:
        raise ValueError(f"'low_threshold' ({low}) must be below 'high_threshold' ({high})")
    if not torch.isfinite(image).all():
        raise ValueError("'image' contains NaN or infinite values")
    x = image.float().clamp(0, 1)
    low = max(low, 1e-6)  # kornia wants a positive low threshold; 0 means "every gradient is a weak edge"
    h, w = x.shape[-2:]
    if min(h, w) < 8:  # kornia's blur pads by reflection, which needs a few pixels: replicate tiny images out
        x = F.pad(x, (0, max(0, 8 - w), 0, max(0, 8 - h)), mode="replicate")
    # kornia's steps up to the thresholds (0 / 0.5 weak / 1 strong); its hysteresis grows the strong edges one pixel
    # an iteration (seconds per 256 px image), so it is done here in one pass: a weak pixel is an edge when it is
    # 8-connected through weak pixels to a strong one, the same result
    edges = [_hysteresis(kornia.filters.canny(x[i:i + 32], low_threshold=low, high_threshold=high,
                                              hysteresis=False)[1][..., :h, :w])
             for i in range(0, len(x), 32)]  # 32 at a time: kornia's intermediates are ~40x the images' size
    return torch.cat(edges).to(image.dtype) if edges else image[:, :1, :h, :w].clone()


def _hysteresis(levels: torch.Tensor) -> torch.Tensor:
    """Canny's hysteresis on thresholded edges (N, 1, H, W) in {0, 0.5, 1}: the 8-connected components of the
    nonzero pixels that hold a pixel at 1 -> (N, 1, H, W) bool."""
    import numpy as np
    from scipy import ndimage

    out = np.zeros(levels.shape, dtype=bool)
    eight = np.ones((3, 3), dtype=bool)
    for i, lv in enumerate(levels[:, 0].cpu().numpy()):
        components, count = ndimage.label(lv > 0, structure=eight)
        if count:
            keep = np.zeros(count + 1, dtype=bool)
            keep[np.unique(components[lv >= 1])] = True
            keep[0] = False
            out[i, 0] = keep[components]
    return torch.from_numpy(out).to(levels.device)


def save_controlnet(net: ViTControlNet, path, base: str = "", half: bool = False) -> None:
    """`half`: store fp16 (the loader computes in fp32 either way)."""
    sd = {k: v.half() if half else v for k, v in net.state_dict().items()}
    ck.save_safetensors(path, sd, {"format": SAFETENSORS_FORMAT, "config": asdict(net.config), "base": base})


@ck.user_file_loader("ViT ControlNet", (".safetensors",))
def load_controlnet(path) -> ViTControlNet:
    tensors, config = ck.load_config_safetensors(
        path, SAFETENSORS_FORMAT, "DiffuGAN ViT ControlNet", ControlNetConfig,
        "Stable Diffusion ControlNets do not fit a DiT; use one made for this DiT (vit_controlnet.save_controlnet)")
    net = ck.build_checked(lambda: ViTControlNet(config), {k: v.float() for k, v in tensors.items()},
                           Path(path).name, config)
    return net.eval().requires_grad_(False)
