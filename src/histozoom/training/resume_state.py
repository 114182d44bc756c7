"""The resume state of a training run (``RUN/last/``), stored without pickle.

Two files, written atomically (and swapped in with the whole ``last/`` folder)::

    state.safetensors   every tensor of the state: optimizer moments and step counts,
                        the torch (and CUDA) RNG states; named t0, t1, ...
    state.json          everything else: {"format": "histozoom-resume/1", "state": ...};
                        a tensor appears there as {"$": "tensor", "key": "t0"}

Plain JSON loses some Python types that the state holds (tuples, integer dict keys, a
``Counter``, non-finite floats, numpy scalars), so these are written as tagged JSON
objects (an object with the key ``"$"``) from a closed list: ``tensor``, ``tuple``,
``dict``, ``counter``, ``float``, ``numpy`` (a scalar) and ``ndarray``. The reader knows
only these tags and numeric numpy dtypes; neither file can name a Python callable or
class, so reading a resume state never runs code from the file. Any type outside the list
is refused when saving (``TypeError``); any defect when loading is an
:class:`~histozoom.errors.InputError` naming the file.

A ``state.pt`` of an older histozoom (a ``torch.save`` pickle) is read only when torch's
restricted unpickler (``weights_only=True``) accepts it, else it is refused with an
``InputError`` — it is never unpickled.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, write_json
from ..errors import InputError
from ..jsonio import read_json

FORMAT = "histozoom-resume/1"
STATE_FILE = "state.json"
TENSORS_FILE = "state.safetensors"
LEGACY_STATE_FILE = "state.pt"
"""What histozoom before this format wrote (a pickle); never unpickled."""

TAG = "$"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NUMPY_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                           "float16", "float32", "float64"})


# ---------------------------------------------------------------------- encoding
class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._keys: dict[int, str] = {}

    def tensor(self, t: torch.Tensor, where: str) -> dict:
        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"{where}: cannot store a {t.layout} / quantized tensor in the resume state")
        key = self._keys.get(id(t))
        if key is None:  # the same tensor object twice is stored once (and shared again on load)
            key = self._keys[id(t)] = f"t{len(self.tensors)}"
            self.tensors[key] = t.detach().to("cpu", copy=True).contiguous()
        return {TAG: "tensor", "key": key}

    def encode(self, o: Any, where: str = "state") -> Any:
        if o is None or isinstance(o, (bool, str)):
            return o
        if isinstance(o, np.generic):  # before float: np.float64 is a float
            if o.dtype.name not in _NUMPY_DTYPES:
                raise TypeError(f"{where}: cannot store a numpy {o.dtype} value in the resume state")
            return {TAG: "numpy", "dtype": o.dtype.name, "value": self.encode(o.item(), where)}
        if isinstance(o, int):
            return int(o)
        if isinstance(o, float):
            return float(o) if math.isfinite(o) else {TAG: "float", "value": repr(float(o))}
        if isinstance(o, torch.Tensor):
            return self.tensor(o, where)
        if isinstance(o, np.ndarray):
            if o.dtype.name not in _NUMPY_DTYPES:
                raise TypeError(f"{where}: cannot store a numpy {o.dtype} array in the resume state")
            return {TAG: "ndarray", "dtype": o.dtype.name, "shape": list(o.shape),
                    "data": self.encode(o.ravel().tolist(), where)}
        if isinstance(o, tuple):
            return {TAG: "tuple", "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(o)]
        if isinstance(o, Counter):
            return {TAG: "counter", "items": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in o.items()]}
        if isinstance(o, dict):
            if TAG not in o and all(isinstance(k, str) for k in o):
                return {k: self.encode(v, f"{where}.{k}") for k, v in o.items()}
            return {TAG: "dict", "items": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in o.items()]}
        raise TypeError(f"{where}: cannot store a {type(o).__module__}.{type(o).__qualname__} in the resume state")


def save_state(directory: str | Path, state: dict) -> None:
    """Write ``state`` as ``directory/state.safetensors`` + ``directory/state.json``
    (each atomically; the tensors first, so a ``state.json`` always has its tensors)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    enc = _Encoder()
    body = enc.encode(state)
    with atomic_path(directory / TENSORS_FILE) as tmp:
        save_file(enc.tensors, str(tmp), metadata={"format": FORMAT})
    write_json(directory / STATE_FILE, {"format": FORMAT, "tensors": TENSORS_FILE, "state": body}, indent=None)


# ---------------------------------------------------------------------- decoding
class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        self.tensors = tensors
        self.path = path
        self.used: set[str] = set()

    def bad(self, problem: str) -> InputError:
        return InputError(self.path, f"malformed resume state: {problem}")

    def pairs(self, o: dict) -> list[tuple[Any, Any]]:
        items = o.get("items")
        if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise self.bad(f"a {o[TAG]!r} value needs 'items': a list of [key, value] pairs")
        return [(self.decode(k), self.decode(v)) for k, v in items]

    def dtype(self, o: dict) -> np.dtype:
        name = o.get("dtype")
        if name not in _NUMPY_DTYPES:
            raise self.bad(f"numpy dtype {name!r} is not one of the numeric dtypes a resume state holds")
        return np.dtype(name)

    def decode(self, o: Any) -> Any:
        if isinstance(o, list):
            return [self.decode(v) for v in o]
        if not isinstance(o, dict):
            return o
        if TAG not in o:
            return {k: self.decode(v) for k, v in o.items()}
        tag = o[TAG]
        if tag == "tensor":
            key = o.get("key")
            if not isinstance(key, str) or key not in self.tensors:
                raise self.bad(f"tensor {key!r} is not in {TENSORS_FILE}")
            self.used.add(key)
            return self.tensors[key]
        if tag == "tuple":
            if not isinstance(o.get("items"), list):
                raise self.bad("a 'tuple' value needs 'items': a list")
            return tuple(self.decode(v) for v in o["items"])
        if tag == "dict":
            return dict(self.pairs(o))
        if tag == "counter":
            return Counter(dict(self.pairs(o)))
        if tag == "float":
            if o.get("value") not in _NONFINITE:
                raise self.bad(f"a 'float' value must be one of {sorted(_NONFINITE)}, got {o.get('value')!r}")
            return _NONFINITE[o["value"]]
        if tag == "numpy":
            value = self.decode(o.get("value"))
            if not isinstance(value, (bool, int, float)):
                raise self.bad(f"a numpy scalar must hold a number, got {value!r}")
            return self.dtype(o).type(value)
        if tag == "ndarray":
            dt, shape, data = self.dtype(o), o.get("shape"), self.decode(o.get("data"))
            if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(data, list)
                    and all(isinstance(v, (int, float)) for v in data) and len(data) == math.prod(shape)):
                raise self.bad("an 'ndarray' value needs 'shape' (sizes) and 'data' (that many numbers)")
            return np.array(data, dtype=dt).reshape(shape)
        raise self.bad(f"unknown tagged value {tag!r}")


def load_state(directory: str | Path) -> dict:
    """The state :func:`save_state` wrote into ``directory``; any defect is an
    :class:`InputError` naming the file."""
    from safetensors.torch import load_file

    directory = Path(directory)
    jpath, tpath = directory / STATE_FILE, directory / TENSORS_FILE
    doc = read_json(jpath, "resume state")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("state"), dict):
        raise InputError(jpath, f"not a histozoom resume state (expected an object with format {FORMAT!r} and 'state')")
    if not tpath.is_file():
        raise InputError(tpath, "resume state tensors file not found")
    try:
        tensors = load_file(str(tpath), device="cpu")
    except Exception as err:  # safetensors raises its own error types on bad files
        raise InputError(tpath, f"cannot read safetensors ({type(err).__name__}: {err})") from err
    dec = _Decoder(tensors, jpath)
    try:
        state = dec.decode(doc["state"])
    except InputError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise dec.bad(f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise dec.bad(f"'state' must be an object, got {type(state).__name__}")
    unused = sorted(set(tensors) - dec.used)
    if unused:
        raise InputError(tpath, f"holds tensors {STATE_FILE} does not name ({', '.join(unused[:5])}); "
                                "the two files are not from the same save")
    return state


def load_legacy_state(path: str | Path) -> dict:
    """An older histozoom's ``state.pt``, only through torch's restricted unpickler
    (``weights_only=True``); a file that needs more (every real one: it holds numpy's
    RNG state) is refused with :class:`InputError`, never unpickled."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for a pickle that needs more, others for damaged files
        raise InputError(path, f"resume state written by an older histozoom (a pickle); it cannot be resumed safely "
                               f"and is not unpickled ({type(err).__name__}). Start a new run, or finish this one "
                               "with the histozoom version that wrote it") from None
    if not isinstance(state, dict):
        raise InputError(path, "not a histozoom resume state")
    return state


def read_resume_state(directory: str | Path) -> dict | None:
    """The resume state in ``directory`` (a run's ``last/``); ``None`` where there is none
    (no folder, or an empty one). A folder with files but no state is an :class:`InputError`."""
    directory = Path(directory)
    if (directory / STATE_FILE).is_file():
        return load_state(directory)
    if (directory / LEGACY_STATE_FILE).is_file():
        return load_legacy_state(directory / LEGACY_STATE_FILE)
    if directory.is_dir() and any(directory.iterdir()):
        raise InputError(directory / STATE_FILE, "resume state not found (the folder is incomplete)")
    return None
