"""One training loop for the zoo's trainers: distributed setup, resume, EMA, learning-rate schedule, logging and
periodic held-out evaluation. The trainers write only what is theirs (data, loss, evaluation).

    loop = TrainLoop(out, steps=2000, seed=0, settings=vars(args), eval_every=250)
    model = loop.module(model)                        # on the device; DistributedDataParallel under torchrun
    opt = loop.optimizer(torch.optim.AdamW(model.parameters(), lr=3e-4))
    ema = loop.ema(model, 0.999)
    loop.evaluate = lambda: my_heldout_figures(ema)   # called on rank 0 every eval_every steps and at the end
    for step in loop:                                 # resumes from <out>.train.pt; sets the learning rates
        with loop.autocast():
            loss = ...                                # draw the batch from loop.gen (per rank)
        loop.backward(loss, opt)
        loop.record(loss=loss)
    if loop.finish():                                 # rank 0 of a finished run writes the model

Run as `python script.py …` on one process, or unchanged under `torchrun --nproc_per_node N script.py …`:
gloo on CPU, NCCL on GPUs (one per process, bf16 autocast; on the CPU with cpu_bf16). Every rank draws its own
batches (its generator is seeded by seed and rank), so N processes see N times the batch a step; gradients are
averaged by DDP.

SIGTERM or SIGINT ends a run cleanly: the loop finishes the step, saves its state and stops; the next run of the
same command resumes there. The state file holds only tensors and a JSON log: it is read back with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


class TrainLoop:
    def __init__(self, out: Path, *, steps: int, seed: int = 0, settings: dict | None = None, eval_every: int = 250,
                 log_every: int = 50, warmup: int = 200, final_lr: float = 0.1, grad_clip: float | None = 1.0,
                 threads: int = 0, cpu_bf16: bool = False):
        self.out, self.steps, self.seed = Path(out), steps, seed
        self.eval_every, self.log_every = eval_every, log_every
        self.warmup, self.final_lr, self.grad_clip = warmup, final_lr, grad_clip
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        cuda = torch.cuda.is_available()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
            if threads:
                torch.set_num_threads(threads)
        self.cpu_bf16 = cpu_bf16
        self.is_main = self.rank == 0
        self.gen = torch.Generator().manual_seed(seed * 1000 + self.rank)
        self.log: dict = {"settings": {k: str(v) for k, v in (settings or {}).items()}, "curve": [], "evals": [],
                          "world_size": self.world, "device": str(self.device)}
        self.evaluate: Callable[[], dict] | None = None
        self.step = 0
        self._modules: dict[str, nn.Module] = {}
        self._optimizers: list[tuple[torch.optim.Optimizer, list[float] | None]] = []
        self._emas: list[tuple[nn.Module, nn.Module, float | Callable[[int], float]]] = []
        self._manual_sync: set[int] = set()  # ids of parameters whose gradients backward() averages over ranks
        self._running: dict[str, list[float]] = {}
        self._elapsed = 0.0
        self._stop = False
        self.ckpt = self.out.with_suffix(".train.pt")

    # --- what the loop keeps -------------------------------------------------------------------------------------
    def module(self, model: nn.Module, name: str = "model", ddp: bool = True, **ddp_kwargs) -> nn.Module:
        """The model on the loop's device, wrapped in DistributedDataParallel when several processes run; saved
        and resumed under `name`. Use `raw(m)` for the unwrapped module. ddp=False (GANs: two optimizers, gradient
        penalties through autograd.grad, a discriminator used frozen in the generator's step) leaves it unwrapped:
        `backward` then averages its gradients over the processes itself."""
        model = model.to(self.device)
        self._modules[name] = model
        if not ddp:
            self._manual_sync |= {id(p) for p in model.parameters()}
            if self.world > 1:  # every process starts from rank 0's weights and buffers, as DDP would make it
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t.data, 0)
            return model
        if self.world > 1:
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **ddp_kwargs)
        return model

    def optimizer(self, opt: torch.optim.Optimizer, schedule: bool = True) -> torch.optim.Optimizer:
        """Registers an optimizer, saved and resumed. With `schedule` its learning rates follow the loop's schedule
        (linear warm-up over `warmup` steps, then a cosine from each group's lr down to final_lr x it at the last
        step); without, they stay as set (StyleGAN's constant rates)."""
        self._optimizers.append((opt, [g["lr"] for g in opt.param_groups] if schedule else None))
        return opt

    def ema(self, model: nn.Module, decay: float | Callable[[int], float]) -> nn.Module:
        """An exponential moving average of `model`'s weights, updated after every step, never trained; saved and
        resumed. Buffers are copied. `decay` a number: warmed up as min(decay, (1+s)/(10+s)); a function: of the
        number of steps done, its own schedule (StyleGAN's half-life in images)."""
        raw = self.raw(model)
        avg = copy.deepcopy(raw).eval().requires_grad_(False)
        self._emas.append((avg, raw, decay))
        return avg

    @staticmethod
    def raw(model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def autocast(self):
        """bf16 autocast on CUDA; on the CPU only with cpu_bf16 (CPUs with AMX or AVX512-BF16 run a small DiT's
        training step about 2x faster so; elsewhere it can be slower than float32)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- one step ------------------------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        return warm * (self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * step / self.steps)))

    def backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params=None) -> None:
        """zero_grad, backward, gradients averaged over the processes for modules registered with ddp=False,
        gradient clipping (grad_clip, over `params` or the optimizer's), step."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ps = list(params) if params is not None else [p for g in opt.param_groups for p in g["params"]]
        synced = [p for p in ps if id(p) in self._manual_sync and p.requires_grad]
        if self.world > 1 and synced:  # one collective over every such parameter (zeros where a rank has no grad)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in synced])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for p in synced:
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(ps, self.grad_clip)
        opt.step()

    def record(self, **values) -> None:
        """Scalars for the loss curve (averaged over the steps since the last log line and over ranks)."""
        for k, v in values.items():
            self._running.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))

    # --- the run -------------------------------------------------------------------------------------------------
    def __iter__(self):
        self._resume()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            t0 = time.time() - self._elapsed
            while self.step < self.steps and not self._stop:
                f = self.lr_factor(self.step)
                for opt, base in self._optimizers:
                    for g, lr in zip(opt.param_groups, base or ()):
                        g["lr"] = lr * f
                yield self.step
                self._update_emas()
                self.step += 1
                if self.world > 1:  # a signal may reach one process first: all stop after the same step
                    flag = torch.tensor(float(self._stop), device=self.device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    self._stop = bool(flag.item())
                self._elapsed = time.time() - t0
                if self.step % self.log_every == 0 or self.step == self.steps:
                    self._log_line()
                evaluate = self.step % self.eval_every == 0 or self.step == self.steps
                if evaluate and self.evaluate is not None and self.is_main:
                    self.log["evals"].append({"step": self.step, **self.evaluate()})
                    print(json.dumps(self.log["evals"][-1]), flush=True)
                if evaluate or self._stop:
                    self.save_state()
            if self._stop and self.is_main:
                print(f"stopped at step {self.step}; the same command resumes from {self.ckpt}", flush=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @property
    def stopped(self) -> bool:
        """True when a signal ended the run before its last step (write no final model then)."""
        return self.step < self.steps

    @contextlib.contextmanager
    def rank_zero_first(self):
        """Rank 0 runs the block first (e.g. writes a cache), then the other processes run it (and read it)."""
        if self.world > 1 and not self.is_main:
            dist.barrier()
        yield
        if self.world > 1 and self.is_main:
            dist.barrier()

    def snapshot(self, save: Callable[[Path], None], figures: dict) -> None:
        """Mid-run (before the last step): `save(path)` writes the model so far (the EMA) to <out stem>.latest.<suffix>
        and its log, as of this evaluation's `figures`, goes beside it (.json) — to evaluate or ship mid-run. The file
        is written under a temporary name and renamed, so a reader never sees half of it."""
        if self.step >= self.steps:
            return
        snap = self.out.with_name(f"{self.out.stem}.latest{self.out.suffix}")
        tmp = snap.with_name(snap.name + ".tmp")
        save(tmp)
        tmp.replace(snap)
        current = {"step": self.step, **figures}
        snap.with_suffix(".json").write_text(json.dumps({**self.log, "evals": self.log["evals"] + [current],
                                                         "steps_done": self.step, "final": current}, indent=1))

    def finish(self) -> bool:
        """Ends the run (processes joined); True where this process should write the results: rank 0 of a run that
        reached its last step (a run stopped by a signal has only its state saved)."""
        self.log["steps_done"] = self.step
        if self.log["evals"]:
            self.log["final"] = self.log["evals"][-1]
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return self.is_main and not self.stopped

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def _update_emas(self) -> None:
        with torch.no_grad():
            for avg, raw, decay in self._emas:
                d = decay(self.step + 1) if callable(decay) else min(decay, (1 + self.step) / (10 + self.step))
                for pa, pm in zip(avg.parameters(), raw.parameters()):
                    pa.lerp_(pm.detach(), 1 - d)
                for ba, bm in zip(avg.buffers(), raw.buffers()):
                    ba.copy_(bm)

    def _log_line(self) -> None:
        means = {}
        for k, vs in self._running.items():
            v = torch.tensor(sum(vs) / max(1, len(vs)), dtype=torch.float64)
            if self.world > 1:
                v = v.to(self.device)
                dist.all_reduce(v)
                v = v.cpu() / self.world
            means[k] = float(v)
        self._running = {}
        self.log["curve"].append({"step": self.step, **means, "sec": round(self._elapsed, 1)})
        if self.is_main:
            print(f"step {self.step} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                  + f" ({self._elapsed:.0f}s)", flush=True)

    def save_state(self) -> None:
        if self.is_main:
            state = {"step": self.step, "elapsed": self._elapsed, "gen": self.gen.get_state(),
                     "log": json.dumps(self.log),
                     "modules": {n: m.state_dict() for n, m in self._modules.items()},
                     "optimizers": [o.state_dict() for o, _ in self._optimizers],
                     "emas": [a.state_dict() for a, _, _ in self._emas]}
            self.ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.ckpt.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(self.ckpt)  # never a half-written state file
        if self.world > 1:
            dist.barrier()

    def _resume(self) -> None:
        if not self.ckpt.exists():
            return
        state = torch.load(self.ckpt, map_location="cpu", weights_only=True)  # our own file: tensors and JSON
        for n, m in self._modules.items():
            m.load_state_dict(state["modules"][n])
        for (o, _), s in zip(self._optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for (a, _, _), s in zip(self._emas, state["emas"]):
            a.load_state_dict(s)
        self.step, self._elapsed = int(state["step"]), float(state["elapsed"])
        log = json.loads(state["log"])
        log["resumed"] = log.get("resumed", []) + [{"step": self.step, "settings": self.log["settings"]}]
        self.log = log
        if self.rank == 0:
            self.gen.set_state(state["gen"])
        else:  # other ranks: a fresh stream of their own for the rest of the run
            self.gen.manual_seed(self.seed * 1000 + self.rank + 7919 * self.step)
        if self.is_main:
            print(f"resumed at step {self.step} from {self.ckpt}", flush=True)
