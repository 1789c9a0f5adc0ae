"""Checkpoint I/O for every stage, in one place. No checkpoint ever executes code.

- safetensors: read with `safetensors.torch`, architecture metadata as JSON in the header's `__metadata__`.
- torch `.pt` / `.pth` / `.bin`: `torch.load(weights_only=True)` only.
- NVIDIA StyleGAN pickles (`.pkl`): a restricted `pickle.Unpickler` whose `find_class` admits a short list of
  names and maps each one to plain data. The pickles' `torch_utils.persistence` records carry module source code
  (which NVlabs' loader `exec`s); here such a record becomes a `PersistentRecord(class_name, state)` and the
  source is dropped unread. GANformer's networks also hold plain `torch.nn.Dropout` modules: each becomes a record of
  its state too. TensorFlow-era pickles (StyleGAN2 / StyleGAN2-ADA TF, GANformer TF) hold `dnnlib.tflib.network.
  Network` objects: each becomes a `TFNetworkRecord` of its name, kwargs, variables (numpy arrays) and components;
  the build source it carries is dropped unread. Any other global is refused before anything is constructed.

Each reader checks the file's structure before trusting it (a safetensors header against the file, a torch zip's
entries, no data after the last thing read) and every failure becomes a `CheckpointError` that names the file.
Every loader of a user file is declared with `@user_file_loader` (the registry `LOADERS`), which turns any error
left into one that names the file too; the hostile-file corpus (tests/security) runs every registered loader.
SECURITY.md says what each loader accepts and refuses.
"""
from __future__ import annotations

import codecs
import collections
import functools
import io
import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message says which file, what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------------------
# The registry of loaders of user files
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loader:
    what: str                  # "DiT", "StyleGAN generator", ...
    function: str              # module.function, for messages and SECURITY.md
    suffixes: tuple[str, ...]  # the file types it reads


LOADERS: dict[str, Loader] = {}


def user_file_loader(what: str, suffixes: tuple[str, ...]):
    """Declare a function `load(path, ...)` that reads a user's file: it joins LOADERS (so the hostile-file corpus
    covers it) and any error it lets through that is not already a CheckpointError (an IndexError from a
    malformed tensor, a TypeError from a lying config) is reported as one that names the file."""
    def wrap(fn):
        @functools.wraps(fn)
        def load(path, *args, **kwargs):
            try:
                return fn(path, *args, **kwargs)
            except CheckpointError as e:
                if str(e).startswith(Path(path).name):
                    raise
                raise type(e)(_named(Path(path), e)) from None
            except MemoryError:
                raise CheckpointError(f"{Path(path).name}: ran out of memory loading this {what} (the model may be "
                                      "too large for this machine)") from None
            except Exception as e:  # (anything a malformed file provokes; never a crash)
                raise CheckpointError(f"{Path(path).name}: not a usable {what} file ({type(e).__name__}: "
                                      f"{_short(e)})") from None

        LOADERS[what] = Loader(what, f"{fn.__module__}.{fn.__qualname__}", tuple(suffixes))
        return load

    return wrap


def registered_loaders() -> dict[str, Loader]:
    """LOADERS, complete: every module of this package is imported first (each registers its own loaders)."""
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{info.name}")
    return dict(LOADERS)


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " …"


_MAX_WIDTH, _MAX_DEPTH = 1 << 20, 512  # no real network comes near either
_DEPTH_KEYS = {"depth", "base_depth", "layers", "num_layers", "n_layers", "num_res_blocks", "mapping_layers"}


def check_config_sizes(config, source: str) -> None:
    """Every integer in an architecture read from a file (a dataclass or dict, nested dicts and lists included)
    must be plausible: at most 2^20 (widths, resolutions, classes), and at most 512 for counts of layers, blocks
    or depth, which decide how many modules are built at all. A file claiming more is refused before anything
    is built (some constructors compute small tables in numpy, outside the meta device)."""
    from dataclasses import asdict, is_dataclass

    def walk(value, key=""):
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            limit = _MAX_DEPTH if key.lower() in _DEPTH_KEYS else _MAX_WIDTH
            if not -1 <= value <= limit:
                raise CheckpointError(f"{source}: the architecture in the file is implausible ({key} = {value}; at "
                                      f"most {limit}): the file is damaged or made to exhaust memory")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            if len(value) > _MAX_DEPTH:
                raise CheckpointError(f"{source}: the architecture in the file is implausible ({key} has "
                                      f"{len(value)} entries)")
            for v in value:
                walk(v, key)

    walk(asdict(config) if is_dataclass(config) else config)


def build_checked(factory, tensors: dict[str, torch.Tensor], source: str, config=None,
                  computed: tuple[str, ...] = ()) -> torch.nn.Module:
    """`factory()` built with the file's weights, strictly: the architecture (from the file's own config: give it
    as `config` to have its sizes checked first, check_config_sizes) is built on the meta device and checked
    against the tensors' keys and shapes, so a config that lies about the size (a billion-wide layer) is refused
    before any memory is allocated for it. `computed`: endings of the names of buffers the architecture computes
    from its config and the file's format does not store (a TF StyleGAN's resample filters): the model's own."""
    if config is not None:
        check_config_sizes(config, source)
    with torch.device("meta"):
        skeleton = factory()
    own = [k for k in skeleton.state_dict() if computed and k.endswith(computed) and k not in tensors]
    check_state_dict(skeleton, {**tensors, **{k: skeleton.state_dict()[k] for k in own}}, source)
    del skeleton
    model = factory()
    model.load_state_dict({**tensors, **{k: model.state_dict()[k] for k in own}}, strict=True)
    return model


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
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("a tensor storage record that holds no bytes")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"refused to load: a tensor storage inside holds more than weights "
                                f"({_weights_only_reason(e)})") from None


class _TorchModuleRecord(PersistentRecord):
    """A plain torch.nn module pickled inside a persistent network (GANformer's attention keeps a torch.nn.Dropout):
    pickle builds it empty (NEWOBJ) and hands it its state (BUILD), which is kept as data, as a PersistentRecord's
    is; nothing of torch.nn is constructed. `class_name` says which module it stood for."""

    class_name = "Dropout"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a {self.class_name} module whose state is not a dictionary")
        self.state = state


class TFNetworkRecord:
    """A `dnnlib.tflib.network.Network` of a TensorFlow-era pickle (StyleGAN2, StyleGAN2-ADA, GANformer), minus its
    code. Pickle builds it empty (NEWOBJ) and hands it the network's `__getstate__` dictionary (BUILD): kept here are
    its name, format version, constructor kwargs (`static_kwargs`), variables (name -> numpy array) and sub-networks
    (`components`, records too); `build_module_src`, the source TensorFlow would exec to rebuild it, is dropped
    unread. Anything malformed is refused while unpickling."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a TensorFlow network whose state is not a dictionary")
        version = state.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise pickle.UnpicklingError(f"a TensorFlow network with a malformed version {version!r}")
        kwargs, components, variables = (state.get(k) for k in ("static_kwargs", "components", "variables"))
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise pickle.UnpicklingError("a TensorFlow network whose static_kwargs are not a dictionary of names")
        if not isinstance(components, dict) or not all(
                isinstance(k, str) and isinstance(v, TFNetworkRecord) for k, v in components.items()):
            raise pickle.UnpicklingError("a TensorFlow network whose components are not networks")
        if not isinstance(variables, (list, tuple)) or not all(
                isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], np.ndarray)
                for v in variables):
            raise pickle.UnpicklingError("a TensorFlow network whose variables are not (name, array) pairs")
        self.name = str(state.get("name"))
        self.version, self.static_kwargs, self.components = version, dict(kwargs), dict(components)
        self.variables = [(name, value) for name, value in variables]


def tf_variables(net: TFNetworkRecord) -> dict[str, np.ndarray]:
    """Every variable of a TensorFlow network and its components, named by path ("synthesis/4x4/Conv/weight")."""
    out: dict[str, np.ndarray] = {}

    def walk(n: TFNetworkRecord, prefix: str, depth: int) -> None:
        if depth > 8:
            raise CheckpointError("TensorFlow network components nested deeper than any real network")
        for name, value in n.variables:
            if prefix + name in out:
                raise CheckpointError(f"TensorFlow variable '{prefix + name}' appears twice")
            out[prefix + name] = value
        for name, child in n.components.items():
            walk(child, f"{prefix}{name}/", depth + 1)

    walk(net, "", 0)
    return out


def tf_tensors(expected: dict[str, torch.Tensor], variables: dict[str, np.ndarray], lookup, source: str, what: str,
               unused=(), supported: str = "") -> dict[str, torch.Tensor]:
    """Our state dict from a TensorFlow network's variables. For each `expected` key (a meta-device state dict),
    `lookup(key)` gives (TF variable name, how to turn it into ours), (None, None) for a parameter the settings
    never read and TF does not create (zeros), or None for a buffer the config computes (left out: see
    build_checked's `computed`). A variable that is missing or cannot hold the parameter, and one that nothing
    reads (but those in `unused`), is named; `what` says what the network should have been."""
    tensors, used, missing = {}, set(), []
    for key, meta in expected.items():
        found = lookup(key)
        if found is None:
            continue
        tf_name, convert = found
        if tf_name is None:
            tensors[key] = torch.zeros(meta.shape)
        elif tf_name not in variables:
            missing.append(tf_name)
        else:
            used.add(tf_name)
            value = np.asarray(variables[tf_name])
            try:
                tensors[key] = torch.from_numpy(np.array(convert(value), dtype=np.float32, order="C"))  # 0-d stays 0-d
            except (IndexError, ValueError) as e:
                raise CheckpointError(f"{source}: TensorFlow variable '{tf_name}' has shape {list(value.shape)}, "
                                      f"which cannot hold '{key}' {list(meta.shape)} ({e})") from None
    if missing:
        raise CheckpointError(f"{source}: the TensorFlow network lacks {len(missing)} variable(s) its settings need: "
                              f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; supported: {supported}")
    extra = sorted(set(variables) - used - set(unused))
    if extra:
        raise CheckpointError(f"{source}: the TensorFlow network has variable(s) {what} does not: "
                              f"{', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}; supported: {supported}")
    return tensors


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


class _NdarrayClass:
    """What the name numpy.ndarray resolves to: a marker only `_numpy_reconstruct` accepts (calling it builds
    nothing), so an array comes into being only through numpy's own pickle path, whose dtype is checked."""


def _numpy_reconstruct(cls, shape, dtype_char):
    if cls is not _NdarrayClass:
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
    ("torch.nn.modules.dropout", "Dropout"): _TorchModuleRecord,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NdarrayClass,
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
                "never needs (it could run code). Only NVIDIA StyleGAN2/2-ADA/3 (PyTorch or TensorFlow) and GANformer "
                "network pickles are accepted; if this file is a StyleGAN one, convert it on a trusted machine with "
                "scripts/convert_stylegan.py"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to load: unexpected persistent id in the pickle")


def load_nvidia_pickle(path: str | os.PathLike) -> Any:
    """Unpickle an NVlabs network pickle into plain data (dicts, tensors, PersistentRecords). Never runs code.
    The file must be one pickle and nothing more: data after it (a second stream) is refused, not ignored."""
    path = Path(path)
    _require_file(path)
    if _opens_as_zip(path):
        raise CheckpointError(f"{path.name}: this is a zip archive (a torch.save file?), not an NVIDIA pickle; "
                              "a DiT or CLIP .pt/.pth/.bin goes to its own loader")
    with open(path, "rb") as f:
        try:
            value = _RestrictedUnpickler(f, path.name).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(_named(path, e)) from None
        except CheckpointError:
            raise
        except Exception as e:  # (EOFError, UnpicklingError, MemoryError, RecursionError, ...)
            raise CheckpointError(
                f"{path.name}: not a readable NVIDIA pickle ({type(e).__name__}: {_short(e)}); the file may be "
                "truncated or not a StyleGAN network pickle") from None
        rest = len(f.read(1 << 16))
    if rest:
        raise CheckpointError(f"{path.name}: refused to load: {'more than ' if rest == 1 << 16 else ''}{rest} bytes "
                              "follow the pickle (a second stream, or another file appended); an NVIDIA network "
                              "pickle is a single stream")
    return value


def _named(path: Path, e: Exception) -> str:
    """An error raised inside a reader, prefixed with the file's name unless it already starts with it."""
    text = str(e)
    return text if text.startswith(path.name) else f"{path.name}: {text}"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or ["the file ends early" if isinstance(e, EOFError) else "no detail"])[0][:300]


def _weights_only_reason(e: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (its message opens with boilerplate)."""
    m = re.search(r"Trying to load unsupported GLOBAL[^\n]*|WeightsUnpickler error:\s*[^\n]+|Unsupported[^\n]*", str(e))
    return (" ".join(m.group(0).split()) if m else _first_line(e))[:300]


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path.name}: not a file ({path})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name}: the file is empty (0 bytes); the download or copy did not finish")


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


# safetensors dtypes and their sizes in bytes (the format's own list)
_SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
                       "F8_E8M0": 1, "C64": 8, "I16": 2, "U16": 2, "F16": 2,
                       "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit


def safetensors_header(path: str | os.PathLike) -> dict:
    """Read and check a safetensors header against the file before any tensor is read: a length that fits the
    file, strict UTF-8 JSON without duplicate keys, known dtypes, shapes of non-negative integers, and offsets
    that tile the data exactly (each tensor's byte size, no overlap, no gap, nothing after). Returns the header."""
    path = Path(path)
    _require_file(path)
    size = path.stat().st_size
    bad = f"{path.name}: not a valid safetensors file:"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{bad} {size} bytes, shorter than the 8-byte header length; it may be truncated")
        (n,) = struct.unpack("<Q", head)
        if n > _SAFETENSORS_MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{bad} its header claims {n} bytes but the file has {size - 8} after the length "
                                  "field; it is truncated or not a safetensors file")
        raw = f.read(n)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{bad} its header is not valid UTF-8 JSON ({_short(e, 200)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{bad} its __metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{bad} tensor '{name[:80]}' is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{bad} tensor '{name[:80]}' has the unknown dtype {str(dtype)[:40]!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 16:
            raise CheckpointError(f"{bad} tensor '{name[:80]}' has the shape {str(shape)[:80]}, not a list of "
                                  "non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{bad} tensor '{name[:80]}' has the data_offsets {str(offsets)[:80]}")
        nbytes = _SAFETENSORS_DTYPES[dtype]
        for d in shape:
            nbytes *= d
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(f"{bad} tensor '{name[:80]}' of shape {shape} and dtype {dtype} needs {nbytes} "
                                  f"bytes but its offsets span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise CheckpointError(f"{bad} tensor '{name[:80]}' {what} (offset {begin}, expected {end})")
        end = stop
    if 8 + n + end != size:
        raise CheckpointError(f"{bad} its tensors end at byte {8 + n + end} but the file has {size} bytes"
                              + ("; it is truncated" if 8 + n + end > size else " (data appended after them)"))
    return header


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file whose header checks out (safetensors_header)."""
    from safetensors.torch import load_file

    path = Path(path)
    header = safetensors_header(path)
    try:
        return load_file(str(path)), dict(header.get("__metadata__", {}))
    except Exception as e:  # (safetensors raises its own error types)
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({_short(e)})") from None


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


# What torch.save writes into its zip archive, under one top-level folder: nothing else is accepted (a TorchScript
# archive's code/ and constants.pkl, a second pickle, any other entry).
_TORCH_ZIP_ENTRY = re.compile(r"[^/]+/(data\.pkl|version|\.format_version|\.storage_alignment|byteorder|"
                              r"data/\d+|\.data/serialization_id|\.data/version)")


def _check_torch_zip(path: Path, size: int) -> None:
    """A torch.save zip archive, checked before torch reads it: it starts at the first byte and ends with its
    directory (nothing prepended or appended), holds only what torch.save writes, once each, stored uncompressed
    (torch never compresses: a compressed entry is a zip bomb's tool) within the file's size, and its data.pkl is
    exactly one pickle stream."""
    bad = f"{path.name}: refused to load:"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{bad} a zip archive with data before its first entry (a polyglot: two files in "
                                  "one); torch.save archives start at the first byte")
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise CheckpointError(f"{path.name}: not a readable torch zip archive ({_short(e)}); it may be "
                                  "truncated") from None
        with zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if not infos or min(i.header_offset for i in infos) != 0:
                raise CheckpointError(f"{bad} a zip archive with data before its first entry (a polyglot: two files "
                                      "in one); torch.save archives start at the first byte")
            f.seek(size - 22 - len(zf.comment))
            if f.read(4) != b"PK\x05\x06":
                raise CheckpointError(f"{bad} data follows the zip archive's directory (another file appended)")
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise CheckpointError(f"{bad} the archive holds {', '.join(dupes[:3])} more than once (which copy "
                                      "a reader takes differs between readers)")
            roots = {n.split("/", 1)[0] for n in names}
            odd = [n for n in names if not _TORCH_ZIP_ENTRY.fullmatch(n)]
            if len(roots) != 1 or odd:
                code = any("/code/" in n or n.endswith("constants.pkl") for n in names)
                raise CheckpointError(
                    f"{bad} {'a TorchScript archive (it carries code), ' if code else ''}the archive holds entries "
                    f"torch.save never writes: {', '.join((odd or names)[:4])}. Only state dicts saved with "
                    "torch.save are accepted; re-save the weights as safetensors on a trusted machine")
            pkl = next((i for i in infos if i.filename.endswith("/data.pkl")), None)
            if pkl is None:
                raise CheckpointError(f"{path.name}: not a torch.save archive (no data.pkl)")
            if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > size:
                raise CheckpointError(f"{bad} compressed entries ({sum(i.file_size for i in infos)} bytes unpacked "
                                      f"from a {size}-byte file); torch.save stores its entries uncompressed")
            data = _stored_entry(f, pkl, path)
    end = _pickle_end(data, f"{path.name}: data.pkl")
    if end != len(data):
        raise CheckpointError(f"{bad} {len(data) - end} bytes follow the pickle in data.pkl (a second stream)")


def _stored_entry(f, info: zipfile.ZipInfo, path: Path) -> bytes:
    """The bytes of an uncompressed entry, read at its offset (torch can write archives without CRCs, which
    zipfile.read would refuse)."""
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path.name}: not a readable torch zip archive (bad local header of {info.filename})")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    data = f.read(info.file_size)
    if len(data) != info.file_size:
        raise CheckpointError(f"{path.name}: not a readable torch zip archive ({info.filename} is cut short); it "
                              "may be truncated")
    return data


def _opens_as_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_legacy_torch_magic(head: bytes) -> bool:
    """Whether `head` opens with torch's legacy magic number pickled alone, at any protocol."""
    try:
        ops = []
        for op, arg, _ in pickletools.genops(head):
            if op.name == "STOP":
                break
            if op.name not in ("PROTO", "FRAME"):
                ops.append((op.name, arg))
        else:
            return False
    except Exception:  # (bytes that are no pickle)
        return False
    return len(ops) == 1 and ops[0][1] == LEGACY_TORCH_MAGIC


def _pickle_end(data: bytes, what: str) -> int:
    """Where the first pickle stream in `data` ends, found by reading its opcodes (nothing is executed)."""
    try:
        for op, _, pos in pickletools.genops(data):
            if op.name == "STOP":
                return pos + 1
    except Exception as e:  # (ValueError on bad opcodes, truncated arguments)
        raise CheckpointError(f"{what} is not a readable pickle ({_short(e, 200)}); the file may be "
                              "truncated") from None
    raise CheckpointError(f"{what} is not a complete pickle; the file may be truncated")


LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the number every pre-1.6 torch.save file opens with


def load_torch_weights(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only (plus argparse records mapped to
    ArgsRecord); a code-carrying pickle is refused. A zip archive must be exactly what torch.save writes
    (_check_torch_zip); a legacy (pre-1.6) file must end where torch stops reading it."""
    path = Path(path)
    _require_file(path)
    size = path.stat().st_size
    is_zip = _opens_as_zip(path)
    if is_zip:
        _check_torch_zip(path, size)
    elif zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name}: refused to load: a zip archive with data before its first entry (a "
                              "polyglot: two files in one); torch.save archives start at the first byte")
    else:
        with open(path, "rb") as f:
            head = f.read(64)
        if head[:2] == b"PK":
            raise CheckpointError(f"{path.name}: a damaged zip archive (its directory cannot be found); the file is "
                                  "probably truncated: download or copy it again")
        if head[:1] != b"\x80":  # a legacy torch file opens with a pickle's PROTO opcode
            try:
                safetensors_header(path)
                hint = "; it is a safetensors file: give it the .safetensors extension"
            except CheckpointError:
                hint = ""
            raise CheckpointError(f"{path.name}: not a torch file (neither a torch.save zip archive nor a legacy "
                                  f"torch pickle){hint}")
        if not _is_legacy_torch_magic(head):
            raise CheckpointError(f"{path.name}: a plain pickle, not a file written by torch.save (no torch magic "
                                  "number); an NVIDIA StyleGAN network pickle goes to the StyleGAN loader as .pkl, "
                                  "anything else is refused")
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals([(ArgsRecord, "argparse.Namespace")]):
            value = torch.load(f, map_location="cpu", weights_only=True)
            stop = f.tell()
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # an opcode torch's safe reader lacks (e.g. protocol 4's FRAME)
            raise CheckpointError(
                f"{path.name}: torch's weights-only reader cannot read this file's pickle ({_weights_only_reason(e)};"
                " a legacy file saved with pickle protocol 4 or 5, or a damaged one). Re-save it with torch.save's "
                "defaults or as safetensors on a trusted machine") from None
        raise UnsafePickleError(
            f"{path.name}: refused to load: the file holds more than weights ({_weights_only_reason(e)}). "
            "Only plain state dicts are accepted; re-save it as safetensors on a trusted machine"
        ) from None
    except Exception as e:  # (RuntimeError, EOFError, struct.error, MemoryError, ...)
        raise CheckpointError(f"{path.name}: not a readable torch file ({type(e).__name__}: {_first_line(e)}); it "
                              "may be truncated") from None
    if not is_zip and stop != size:
        raise CheckpointError(f"{path.name}: refused to load: {size - stop} bytes follow what torch reads of this "
                              "legacy file (a second stream, or another file appended)")
    return value


def check_state_dict(model: torch.nn.Module | dict, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check with an error that names the file, the missing/unexpected keys and shapes.
    `model`: the module, or its state dict."""
    expected = model if isinstance(model, dict) else model.state_dict()
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


# The raw readers every loader goes through (the hostile-file corpus runs them directly too).
RAW_READERS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "NVIDIA pickle": (load_nvidia_pickle, (".pkl",)),
    "safetensors": (load_safetensors, (".safetensors",)),
    "torch weights": (load_torch_weights, (".pt", ".pth", ".bin", ".ckpt")),
}
