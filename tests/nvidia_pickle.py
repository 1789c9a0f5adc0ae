"""Writes StyleGAN checkpoints in NVIDIA's pickle layout for tests (no NVlabs code involved).

The layout, as NVlabs' training loop writes it: `pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...))` where every network is a `torch_utils.persistence` object, pickled as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name,
state}; state is the nn.Module's __dict__ (_parameters, _buffers, _modules, _init_kwargs, plain attributes).
Here module_src is a placeholder string: our loader must never look at it. The pickling itself is
devkit/persistence_pickle.py's (GANformer's snapshots share it).
"""
from __future__ import annotations

import numpy as np
import torch

from devkit.persistence_pickle import EasyDict, Record, dump, module_state


def module_record(module: torch.nn.Module, init_kwargs: dict | None = None) -> Record:
    """An nn.Module tree as NVlabs persistent records (class name = our class name, NVlabs' where they match)."""
    state = module_state(module._parameters, module._buffers,
                         {k: module_record(v) for k, v in module._modules.items()}, init_kwargs)
    for attr in ("weight_gain", "bias_gain"):  # NVlabs stores these as numpy float64 scalars
        if hasattr(module, attr):
            state[attr] = np.float64(getattr(module, attr))
    name = type(module).__name__
    return Record("SynthesisNetwork" if name.startswith("SynthesisNetwork") else name, state)


def write_nvidia_pickle(path, G, nested_synthesis_kwargs: bool = False, extra: dict | None = None,
                        G_train=None) -> None:
    """Write G (a diffugan Generator) as G_ema of an NVlabs snapshot pickle (protocol 4, like theirs); `G_train`
    (default: G) goes in as the raw training generator `G`."""
    cfg = G.config
    kwargs = dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
                  img_channels=cfg.img_channels, mapping_kwargs=EasyDict(cfg.mapping_kwargs))
    if nested_synthesis_kwargs:  # stylegan2-ada-pytorch
        kwargs["synthesis_kwargs"] = EasyDict(cfg.synthesis_kwargs)
    else:  # stylegan3 repository (both generations)
        kwargs.update(cfg.synthesis_kwargs)
    record = module_record(G, kwargs)
    record.class_name = "Generator"
    train_record = record
    if G_train is not None:
        train_record = module_record(G_train, kwargs)
        train_record.class_name = "Generator"
    snapshot = dict(G=train_record, D=None, G_ema=record, augment_pipe=None,
                    training_set_kwargs=EasyDict(resolution=cfg.img_resolution), **(extra or {}))
    dump(snapshot, path, protocol=4)
