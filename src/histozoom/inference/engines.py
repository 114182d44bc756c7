"""Inference engines: one trained model run by PyTorch, ONNX Runtime or OpenVINO.

>>> model = engine_model(from_pretrained("RUN/best.ckpt"), "onnxruntime")
>>> out = model(cell, tissue, windows)        # {"cell_logits", "tissue_logits"}, as the torch model

:func:`engine_model` wraps a model so that every predictor runs it unchanged: calling it,
``tissue_probabilities`` and ``cell_logits_given_tissue`` (cell–tissue models, for slides)
run an exported ONNX graph of that entry point instead of PyTorch; every other attribute
(``config``, ``size_multiple``, ``tissue_prediction_only`` …) is the torch model's.

* **Graphs**: one per entry point, set of given inputs and input shape, exported on first
  use (:func:`export_graph`, the TorchScript-based ONNX exporter, opset :data:`OPSET`) with
  a dynamic batch axis and fixed spatial sides: the cross-view resampling fixes its
  anti-aliasing at export, and a fixed side lets each runtime plan its convolutions.
  Predictors feed fixed sizes (tiles, training size), so a run exports once per entry.
* **Outputs**: the tensors of the entry's result (a dict's tensor values in key order, or
  the one tensor), so ``task_logits`` lists of CHR-Net (used in training only) are left out.
* **Runtimes** run on the CPU, fp32 (OpenVINO's precision hint is pinned to f32: its
  default on CPUs with bf16 units would change the probabilities), with
  ``torch.get_num_threads()`` threads unless told.

:func:`save_onnx` writes one graph with the checkpoint's metadata (``histozoom export``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError

__all__ = ["CPU_DEFAULT", "ENGINES", "OPSET", "EngineModel", "engine_model", "export_graph", "export_inputs", "save_onnx"]

ENGINES = ("torch", "onnxruntime", "openvino")
CPU_DEFAULT = "openvino"
"""What ``engine="auto"`` runs on the CPU: the fastest of :data:`ENGINES` in
``bench/bench_engines.py`` on the project's CPU (README, "Inference engines")."""
OPSET = 20
ENTRIES = ("forward", "tissue_probabilities", "cell_logits_given_tissue")
"""The entry points an engine runs (``forward`` = calling the model)."""


class _Entry(nn.Module):
    """One entry point of ``model`` as a module of its given inputs only (``given[i]``:
    whether positional argument ``i`` is a tensor; the others are passed as ``None``);
    returns the result's tensors as a tuple and records their names in ``keys``."""

    def __init__(self, model: nn.Module, entry: str, given: tuple[bool, ...]):
        super().__init__()
        self.model = model
        self.entry = entry
        self.given = given
        self.keys: list[str] = []

    def forward(self, *inputs: torch.Tensor):
        it = iter(inputs)
        args = [next(it) if g else None for g in self.given]
        fn = self.model if self.entry == "forward" else getattr(self.model, self.entry)
        out = fn(*args)
        if isinstance(out, torch.Tensor):
            self.keys = [""]
            return (out,)
        self.keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        return tuple(out[k] for k in self.keys)


def _input_names(entry: str, n: int) -> list[str]:
    names = {"forward": ["cell", "tissue", "windows", "tissue_mask"], "tissue_probabilities": ["tissue"],
             "cell_logits_given_tissue": ["cell", "tissue_probs", "windows"]}[entry]
    return names[:n] if n <= len(names) else [f"input_{i}" for i in range(n)]


def export_graph(model: nn.Module, entry: str, args: Sequence[torch.Tensor | None],
                 input_names: Sequence[str] | None = None) -> tuple[bytes, list[str], list[str]]:
    """ONNX bytes of ``model``'s ``entry`` for inputs shaped like ``args`` (``None``: not
    given), batch axis dynamic; returns ``(bytes, input names, output names)``."""
    if entry not in ENTRIES:
        raise ValueError(f"unknown entry point {entry!r}; expected one of {ENTRIES}")
    given = tuple(a is not None for a in args)
    while given and not given[-1]:
        given = given[:-1]
    wrapper = _Entry(model, entry, given).eval()
    names = [n for n, g in zip(_input_names(entry, len(given)) if input_names is None else input_names, given) if g]
    example = tuple(a.detach().clone() for a in args[:len(given)] if a is not None)
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = tuple(a.clone() for a in example)
            probe = wrapper(*example)  # the output names, and a check that the entry runs at all
            outputs = [k or "output" for k in wrapper.keys]
            torch.onnx.export(wrapper, example, buf, dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=outputs, dynamic_axes={n: {0: "batch"} for n in names + outputs})
    finally:
        model.train(was_training)
    del probe
    return buf.getvalue(), names, outputs


class _OnnxRuntimeGraph:
    def __init__(self, data: bytes, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for inputs by name (those the graph dropped as unused are ignored)."""
        return self.session.run(None, {n: feed[n] for n in self.inputs})


class _OpenVinoGraph:
    def __init__(self, data: bytes, threads: int):
        import openvino as ov

        model = ov.convert_model(io.BytesIO(data))
        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                               "INFERENCE_PRECISION_HINT": "f32",
                                                               "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.inputs = [i.get_names() for i in self.compiled.inputs]  # a port may carry several names

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer([next(feed[n] for n in names if n in feed) for names in self.inputs])
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.compiled.outputs))]


_RUNTIMES = {"onnxruntime": _OnnxRuntimeGraph, "openvino": _OpenVinoGraph}


class EngineModel:
    """``model``'s entry points (:data:`ENTRIES`) run by ``engine`` (module docstring);
    any other attribute is the torch model's. CPU only; ``to`` another device is refused."""

    def __init__(self, model: nn.Module, engine: str, threads: int | None = None):
        if engine not in _RUNTIMES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        self.__dict__.update(model=model.eval(), engine=engine, threads=threads or torch.get_num_threads(), _graphs={})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    training = False

    def to(self, device) -> EngineModel:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the {self.engine} engine runs on the CPU; use --engine torch for {device}")
        return self

    def eval(self) -> EngineModel:
        return self

    def train(self, mode: bool = True) -> EngineModel:
        return self

    def __call__(self, *args: torch.Tensor | None) -> Any:
        return self._run("forward", args)

    def tissue_probabilities(self, tissue_img: torch.Tensor) -> torch.Tensor:
        return self._run("tissue_probabilities", (tissue_img,))

    def cell_logits_given_tissue(self, cell_img: torch.Tensor, tissue_probs: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        return self._run("cell_logits_given_tissue", (cell_img, tissue_probs, torch.as_tensor(windows, dtype=torch.float32)))

    @property
    def graphs(self) -> int:
        """How many graphs were exported so far (one per entry, inputs and shape)."""
        return len(self._graphs)

    def _run(self, entry: str, args: Sequence[torch.Tensor | None]) -> Any:
        given = [a for a in args if a is not None]
        key = (entry, tuple(a is not None for a in args), tuple((tuple(a.shape[1:]), a.dtype) for a in given))
        if key not in self._graphs:
            data, inputs, outputs = export_graph(self.model, entry, args)
            self._graphs[key] = (_RUNTIMES[self.engine](data, self.threads), inputs, outputs)
        graph, inputs, outputs = self._graphs[key]
        feed = {n: a.detach().cpu().numpy() for n, a in zip(inputs, given)}
        result = [torch.from_numpy(np.asarray(r)) for r in graph.run(feed)]
        if outputs == ["output"]:
            return result[0]
        return dict(zip(outputs, result))


def resolve_engine(engine: str, device: str | torch.device = "cpu") -> str:
    """``engine``, with ``"auto"`` made :data:`CPU_DEFAULT` on the CPU and ``"torch"`` on
    any other device; a non-torch engine on a GPU is refused (it runs on the CPU)."""
    dev = torch.device(device).type
    if engine == "auto":
        return CPU_DEFAULT if dev == "cpu" else "torch"
    if engine not in ENGINES:
        raise InputError(None, f"unknown engine {engine!r}; expected auto or one of {', '.join(ENGINES)}")
    if engine != "torch" and dev != "cpu":
        raise InputError(None, f"the {engine} engine runs on the CPU; use --engine torch (or auto) with --device {device}")
    return engine


def engine_model(model: nn.Module, engine: str = "torch", threads: int | None = None) -> nn.Module | EngineModel:
    """``model`` itself for ``"torch"``, else an :class:`EngineModel` running it with ``engine``."""
    if engine == "torch":
        return model
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    try:
        __import__(engine)
    except ImportError as e:
        raise InputError(None, f"the {engine} engine is not installed: pip install {engine}") from e
    return EngineModel(model, engine, threads)


def export_inputs(model: nn.Module, family: str, extra: dict, entry: str = "forward", size: int | None = None,
                  batch: int = 2) -> tuple[torch.Tensor | None, ...]:
    """Random example inputs of ``entry`` at a checkpoint's sides (``extra``: its record;
    ``size`` overrides every side): for cell–tissue models the training views with the
    cell view centred in the tissue view at their µm/px, for CHR-Net one ``size`` (512) tile."""
    g = torch.Generator().manual_seed(0)
    if family == "nuclei":
        side = size or 512
        return (torch.rand(batch, 3, side, side, generator=g),)
    views = extra.get("views") or {}
    spec = extra.get("spec") or {}
    cs = size or (views.get("cell") or {}).get("size") or extra.get("size")
    ts = size or (views.get("tissue") or {}).get("size") or extra.get("size")
    if not cs or not ts:
        raise ValueError("the checkpoint records no training size; give --size")
    cmpp = (views.get("cell") or {}).get("mpp", spec.get("cell_mpp", 0.2))
    tmpp = (views.get("tissue") or {}).get("mpp", spec.get("tissue_mpp", 0.8))
    f = min(1.0, cs * cmpp / (ts * tmpp))
    cell = torch.rand(batch, 3, cs, cs, generator=g)
    tissue = torch.rand(batch, 3, ts, ts, generator=g)
    win = torch.tensor([[(1 - f) / 2, (1 - f) / 2, f, f]] * batch)
    cfg = model.config
    if entry == "tissue_probabilities":
        return (tissue,)
    if entry == "cell_logits_given_tissue":
        with torch.inference_mode():
            return cell, model.tissue_probabilities(tissue), win
    if model.tissue is None and not cfg.leak_tissue_labels:
        return (cell,)
    mask = None
    if cfg.leak_tissue_labels:
        ms = cs if cfg.tissue_input == "cell" else ts
        mask = torch.randint(0, cfg.n_tissue_classes + 1, (batch, ms, ms), generator=g)
    return cell, tissue, win, mask


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two outputs as probabilities: of their softmax over channels
    (dim 1) when there are several, else of the values themselves (maps, distances)."""
    if a.dim() >= 2 and a.shape[1] > 1:
        a, b = a.softmax(1), b.softmax(1)
    return float((a - b).abs().max())


def save_onnx(model: nn.Module, path: str | Path, args: Sequence[torch.Tensor | None], metadata: dict[str, Any],
              entry: str = "forward") -> dict:
    """Write ``model``'s ``entry`` as one ONNX file (atomic) with ``metadata`` as JSON
    strings in its ``metadata_props``, after checking ONNX Runtime on it against PyTorch
    on ``args`` (``max_abs_prob_difference``: the largest :func:`_difference` of its
    outputs); returns what was written."""
    import onnx

    from ..atomic import atomic_open

    data, inputs, outputs = export_graph(model, entry, args)
    proto = onnx.load_from_string(data)
    for k, v in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = f"histozoom.{k}", json.dumps(v)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    given = [a for a in args if a is not None]
    got = _OnnxRuntimeGraph(data, torch.get_num_threads()).run({n: a.numpy() for n, a in zip(inputs, given)})
    with torch.inference_mode():
        ref = _Entry(model, entry, tuple(a is not None for a in args))(*given)
    diff = max(_difference(torch.from_numpy(np.asarray(a)), b.float()) for a, b in zip(got, ref))
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    shapes = {n: ["batch", *a.shape[1:]] for n, a in zip(inputs, given)}
    return {"path": str(path), "entry": entry, "inputs": shapes, "outputs": outputs, "opset": OPSET,
            "bytes": Path(path).stat().st_size, "max_abs_prob_difference": diff}
