"""Checkpoint I/O for every stage, in one place. No checkpoint ever executes code.

- safetensors: read with `safetensors.torch`, architecture metadata as JSON in the header's `__metadata__`.
- torch `.pt` / `.pth` / `.bin`: `torch.load(weights_only=True)` only.
- NVIDIA StyleGAN pickles (`.pkl`): a restricted `pickle.Unpickler` whose `find_class` admits a short list of
  names and maps each one to plain data. The pickles' `torch_utils.persistence` records carry module source code
  (which NVlabs' loader `exec`s); here such a record becomes a `PersistentRecord(class_name, state)` and the
  source is dropped unread. Any other global is refused before anything is constructed.
"""
from __future__ import annotations

import codecs
import collections
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message says which file, what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------------------
# NVIDIA pickles
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PersistentRecord:
    """What a `torch_utils.persistence` object is, minus its code: the class name and the object's state."""

    class_name: str
    state: dict


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (attribute access is not needed here)."""


def _persistent_record(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise pickle.UnpicklingError("malformed torch_utils.persistence record")
    return PersistentRecord(class_name=str(meta.get("class_name")), state=meta["state"])  # module_src dropped


def _load_storage_from_bytes(data: bytes):
    """A tensor storage pickled by torch is a nested legacy `torch.save` stream: read it with weights_only."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    t = torch.empty(0, dtype=storage.dtype)
    t.set_(storage.untyped_storage() if hasattr(storage, "untyped_storage") else storage, storage_offset, size, stride)
    return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return torch.nn.Parameter(data, requires_grad=False)


def _numpy_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError("numpy object arrays are not allowed in a checkpoint")
    return dt


def _numpy_scalar(dtype, data=None):
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object scalars are not allowed in a checkpoint")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, dtype_char):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_char)


def _codecs_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, encoding)


_TORCH_DTYPES = {name: getattr(torch, name) for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}

# (module, name) -> the plain-data constructor used instead. Nothing else is ever looked up.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): dt for name, dt in _TORCH_DTYPES.items()},
}


class UnsafePickleError(CheckpointError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to load: the pickle asks for '{module}.{name}', which a StyleGAN checkpoint "
                "never needs (it could run code). Only NVIDIA StyleGAN2/2-ADA/3 network pickles are accepted; "
                "if this file is one, convert it on a trusted machine with scripts/convert_stylegan.py"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to load: unexpected persistent id in the pickle")


def load_nvidia_pickle(path: str | os.PathLike) -> Any:
    """Unpickle an NVlabs network pickle into plain data (dicts, tensors, PersistentRecords). Never runs code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name}: this is a torch.save zip archive, not an NVIDIA pickle; "
                              "use a .pt/.pth name")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path.name).load()
        except CheckpointError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{path.name}: not a readable NVIDIA pickle ({type(e).__name__}: {e}); the file may be truncated or "
                "not a StyleGAN network pickle"
            ) from None


def record_tensors(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a persistent nn.Module record into a state_dict (parameters and persistent buffers)."""
    state = record.state
    out: dict[str, torch.Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set", ()) or ())
    for key in ("_parameters", "_buffers"):
        for name, t in (state.get(key) or {}).items():
            if t is not None and not (key == "_buffers" and name in non_persistent):
                out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else t
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            out.update(record_tensors(child, f"{prefix}{name}."))
        elif child is not None:
            raise CheckpointError(f"unexpected non-network submodule '{prefix}{name}' in the pickle")
    return out


def record_child(record: PersistentRecord, name: str) -> PersistentRecord | None:
    return (record.state.get("_modules") or {}).get(name)


# --------------------------------------------------------------------------------------------------------------
# safetensors and torch files
# --------------------------------------------------------------------------------------------------------------
def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors with JSON-encoded metadata values (safetensors metadata must be str -> str)."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({e}); it may be truncated") from None


def load_config_safetensors(path: str | os.PathLike, fmt: str, what: str, config_cls, how: str = ""):
    """One of our own model files: a .safetensors whose metadata names `fmt` and holds the JSON config.
    Returns (tensors, config_cls(**config)); anything else is refused naming the file, and `how` says how such a
    file is made."""
    path = Path(path)
    hint = f"; {how}" if how else ""
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: a {what} is a .safetensors file{hint}")
    tensors, meta = load_safetensors(path)
    if meta.get("format") != fmt or "config" not in meta:
        raise CheckpointError(f"{path.name}: not a {what} (metadata format '{meta.get('format')}', expected "
                              f"'{fmt}'){hint}")
    try:
        config = config_cls(**json.loads(meta["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name}: bad {what} config in the metadata ({e})") from None
    return tensors, config


class ArgsRecord:
    """Stand-in for `argparse.Namespace`, which training scripts (facebookresearch/DiT train.py) store under
    'args': rebuilt as a plain attribute holder (its state is plain data), nothing of argparse is imported."""

    def __repr__(self) -> str:
        return f"ArgsRecord({self.__dict__})"


def load_torch_weights(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only (plus argparse records mapped to
    ArgsRecord); a code-carrying pickle is refused."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([(ArgsRecord, "argparse.Namespace")]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{path.name}: refused to load: the file holds more than weights ({str(e).splitlines()[0]}). "
            "Only plain state dicts are accepted; re-save it as safetensors on a trusted machine"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path.name}: not a readable torch file ({e}); it may be truncated") from None


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check with an error that names the file, the missing/unexpected keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(tensors[k].shape)}"
             for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:10]) + (" …" if len(wrong) > 10 else ""))
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10])
                         + (" …" if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10])
                         + (" …" if len(unexpected) > 10 else ""))
        raise CheckpointError(f"{source}: weights do not fit the architecture: " + " | ".join(parts))
