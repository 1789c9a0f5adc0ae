"""Writes StyleGAN checkpoints in NVIDIA's pickle layout for tests (no NVlabs code involved).

The layout, as NVlabs' training loop writes it: `pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...))` where every network is a `torch_utils.persistence` object, pickled as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name,
state}; state is the nn.Module's __dict__ (_parameters, _buffers, _modules, _init_kwargs, plain attributes).
Here module_src is a placeholder string: our loader must never look at it.
"""
from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import torch

PLACEHOLDER_SRC = "raise RuntimeError('placeholder module source: a safe loader never executes this')\n"


class _EasyDict(dict):
    pass


def _reconstruct_persistent_obj(meta):  # only its qualified name is written into the pickle
    raise RuntimeError("never called when writing")


class _Persistent:
    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=PLACEHOLDER_SRC, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def _nvlabs_names():
    """Make the writer's stand-ins pickle under NVlabs' module names."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = _EasyDict
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
    old = (_reconstruct_persistent_obj.__module__, _EasyDict.__module__, _EasyDict.__qualname__)
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _EasyDict.__module__, _EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    try:
        yield
    finally:
        _reconstruct_persistent_obj.__module__, _EasyDict.__module__, _EasyDict.__qualname__ = old
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def module_record(module: torch.nn.Module, init_kwargs: dict | None = None) -> _Persistent:
    """An nn.Module tree as NVlabs persistent records (class name = our class name, NVlabs' where they match)."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict((k, v) for k, v in module._parameters.items()),
        "_buffers": collections.OrderedDict((k, v) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict((k, module_record(v)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": _EasyDict(init_kwargs or {}),
    }
    for attr in ("weight_gain", "bias_gain"):  # NVlabs stores these as numpy float64 scalars
        if hasattr(module, attr):
            state[attr] = np.float64(getattr(module, attr))
    name = type(module).__name__
    return _Persistent("SynthesisNetwork" if name.startswith("SynthesisNetwork") else name, state)


def write_nvidia_pickle(path, G, nested_synthesis_kwargs: bool = False, extra: dict | None = None,
                        G_train=None) -> None:
    """Write G (a diffugan Generator) as G_ema of an NVlabs snapshot pickle (protocol 4, like theirs); `G_train`
    (default: G) goes in as the raw training generator `G`."""
    cfg = G.config
    kwargs = dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
                  img_channels=cfg.img_channels, mapping_kwargs=_EasyDict(cfg.mapping_kwargs))
    if nested_synthesis_kwargs:  # stylegan2-ada-pytorch
        kwargs["synthesis_kwargs"] = _EasyDict(cfg.synthesis_kwargs)
    else:  # stylegan3 repository (both generations)
        kwargs.update(cfg.synthesis_kwargs)
    record = module_record(G, kwargs)
    record.class_name = "Generator"
    train_record = record
    if G_train is not None:
        train_record = module_record(G_train, kwargs)
        train_record.class_name = "Generator"
    snapshot = dict(G=train_record, D=None, G_ema=record, augment_pipe=None,
                    training_set_kwargs=_EasyDict(resolution=cfg.img_resolution), **(extra or {}))
    with _nvlabs_names(), open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=4)
