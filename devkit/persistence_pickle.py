"""Networks written as `torch_utils.persistence` pickles — the layout of NVlabs' StyleGAN snapshots and of
GANformer's — and as TensorFlow-era `dnnlib.tflib.network.Network` pickles (StyleGAN2 / StyleGAN2-ADA TF), with no
code of theirs involved (tests and parity fixtures).

Every network is pickled as a call to `torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta =
{type, version, module_src, class_name, state}; state is the nn.Module's __dict__ (_parameters, _buffers, _modules,
_init_kwargs, plain attributes). module_src is a placeholder string (`Record.module_src`): a safe loader never
looks at it. A TensorFlow network (`TFNetwork`) is pickled as TF's Network pickles itself: built empty, then handed its
`__getstate__` dictionary (version, name, static_kwargs, components, build_module_src, build_func_name, variables as
(name, numpy array) pairs, input/output shapes and names). `dump` writes under the original module names
(torch_utils.persistence, dnnlib.util.EasyDict, dnnlib.tflib.network.Network).
"""
from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

PLACEHOLDER_SRC = "raise RuntimeError('placeholder module source: a safe loader never executes this')\n"


class EasyDict(dict):
    pass


def _reconstruct_persistent_obj(meta):  # only its qualified name is written into the pickle
    raise RuntimeError("never called when writing")


class Record:
    """A persistent object: pickled as `_reconstruct_persistent_obj(meta)`."""

    module_src = PLACEHOLDER_SRC  # the hostile-file corpus swaps in code here

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return _reconstruct_persistent_obj, (meta,)


class TFNetwork:
    """A `dnnlib.tflib.network.Network` as TF-era pickles hold it (its variables as numpy arrays, its sub-networks
    as `components`). `build_module_src` is a placeholder (the hostile-file corpus swaps in code)."""

    build_module_src = PLACEHOLDER_SRC

    def __init__(self, name: str, static_kwargs: dict, variables: dict, components: dict | None = None,
                 version: int = 4, build_func_name: str = "G_main"):
        self.name, self.static_kwargs, self.variables = name, static_kwargs, variables
        self.components, self.version, self.build_func_name = components or {}, version, build_func_name

    def __getstate__(self):
        return {"version": self.version, "name": self.name, "static_kwargs": dict(self.static_kwargs),
                "components": dict(self.components), "build_module_src": self.build_module_src,
                "build_func_name": self.build_func_name, "variables": list(self.variables.items()),
                "input_shapes": [[None, 1]], "output_shapes": [[None, 1]], "input_names": ["in"],
                "output_names": ["out"]}


def module_state(params: dict, buffers: dict, children: dict, init_kwargs: dict | None = None) -> dict:
    """An nn.Module's __dict__ as persistence pickles hold it."""
    return {"training": False,
            "_parameters": collections.OrderedDict(params), "_buffers": collections.OrderedDict(buffers),
            "_non_persistent_buffers_set": set(), "_modules": collections.OrderedDict(children),
            "_init_args": (), "_init_kwargs": EasyDict(init_kwargs or {})}


@contextlib.contextmanager
def _original_names():
    """Make the stand-ins above pickle under the original module names."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    network = types.ModuleType("dnnlib.tflib.network")
    network.Network = TFNetwork
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib", "dnnlib.tflib.network")
    saved = {k: sys.modules.get(k) for k in names}
    old = (_reconstruct_persistent_obj.__module__, EasyDict.__module__, EasyDict.__qualname__,
           TFNetwork.__module__, TFNetwork.__qualname__)
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util,
                        "dnnlib.tflib": types.ModuleType("dnnlib.tflib"), "dnnlib.tflib.network": network})
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    TFNetwork.__module__, TFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"
    try:
        yield
    finally:
        (_reconstruct_persistent_obj.__module__, EasyDict.__module__, EasyDict.__qualname__,
         TFNetwork.__module__, TFNetwork.__qualname__) = old
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def dump(obj, path, protocol: int | None = None) -> None:
    """pickle.dump `obj` (holding Records, TFNetworks and EasyDicts) to `path` under the original module names."""
    with _original_names(), open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def dump_tf_generator(path, kw: dict, variables: dict, build_module_src: str | None = None,
                      funcs: tuple[str, str, str, str] = ("G_main", "G_main", "G_main", "D_main")):
    """Write `(G, D, Gs)` as a TF-era generator pickle: G and Gs the generator (top-level variables
    `variables["G"]`, components mapping and synthesis), D a stand-in network (loaders read Gs only). `funcs`: the
    build function names of G, mapping, synthesis and D; `build_module_src` (if given) that of the components."""
    import numpy as np

    g, mapping, synthesis, d = funcs

    def generator():
        nets = [TFNetwork("G_mapping", kw, variables["mapping"], build_func_name=mapping),
                TFNetwork("G_synthesis", kw, variables["synthesis"], build_func_name=synthesis)]
        if build_module_src is not None:
            for n in nets:
                n.build_module_src = build_module_src
        return TFNetwork("G", kw, variables["G"], {"mapping": nets[0], "synthesis": nets[1]}, build_func_name=g)

    D = TFNetwork("D", {"resolution": kw["resolution"]}, {"Output/bias": np.zeros([1], np.float32)},
                  build_func_name=d)
    dump((generator(), D, generator()), path, protocol=4)
    return path


def save_tf_fixture(path, fixtures: dict, reference: str) -> None:
    """A parity fixture: per config name (kw, TF variables per network, the reference's outputs), stored as
    `<name>.<output>` and `<name>.tf.<network>.<variable>` tensors with the kwargs as metadata."""
    import json

    import numpy as np
    import torch
    from safetensors.torch import save_file

    tensors, meta = {}, {"reference": reference}
    for name, (kw, variables, outputs) in fixtures.items():
        tensors.update({f"{name}.{key}": value.contiguous() for key, value in outputs.items()})
        for net, vs in variables.items():
            tensors.update({f"{name}.tf.{net}.{var}": torch.from_numpy(np.array(v)) for var, v in vs.items()})
        meta[name] = json.dumps(kw)
    save_file(tensors, str(path), metadata=meta)


def load_tf_fixture(path, name: str) -> tuple[dict, dict, dict]:
    """(TF kwargs, TF variables per network, the reference's outputs) of config `name` of a save_tf_fixture file."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        kw = json.loads(f.metadata()[name])
        variables: dict = {"G": {}, "mapping": {}, "synthesis": {}}
        expected = {}
        for key in f.keys():
            if not key.startswith(name + "."):
                continue
            rest = key[len(name) + 1:]
            if rest.startswith("tf."):
                net, var = rest[3:].split(".", 1)
                variables[net][var] = f.get_tensor(key).numpy()
            else:
                expected[rest] = f.get_tensor(key)
    return kw, variables, expected

