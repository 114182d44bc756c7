"""Nuclei prediction: model maps → instances (watershed) → classes → outputs.

For one RGB tile the model (CHR-Net or the U-Net baseline, :mod:`histozoom.models.chrnet`)
gives per-pixel maps; :class:`NucleiPredictor` turns them into a
:class:`NucleiPrediction`:

* **foreground probability**: ``sigmoid(binary_logits)`` for W-Net models, otherwise
  ``1 - P(background)`` of the final class map;
* **instances**: marker-controlled watershed of the predicted distance map inside the
  foreground (:func:`~histozoom.inference.watershed.instances_from_maps`); for models
  without a distance map (SHR, MHR, the U-Net baseline) the connected foreground components;
* **classes**: majority vote per instance of the per-pixel class map with background
  excluded (the argmax over the nucleus classes), probability = the vote share.

Tiles are reflect-padded to a multiple of the model's ``size_multiple`` (32 for every
CHR-Net variant) and the maps cropped back, so any tile size works. ``tta=True`` averages
the maps over the 8 flips/rotations of :mod:`histozoom.inference.tta` (each inverted).

Outputs (:meth:`NucleiPrediction.write`): the instance map (``_instances.npy`` / ``.tif``), a
CSV table per nucleus (id, centroid x/y, bbox, area, class id and name, probability),
QuPath GeoJSON (detections with classification name and colour), and a CoNSeP-style
``.mat`` (``inst_map``, ``type_map``, ``inst_type``) that ``histozoom nuclei evaluate`` reads.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_open, write_text
from ..constants import NUCLEI_OUTPUT_NAMES, OUTPUT_FORMATS
from ..data.nuclei.consep import write_consep_mat
from ..data.nuclei.records import NucleiSample
from ..data.samples import image_tensor
from ..errors import InputError
from ..models.checkpoint import from_pretrained, load_config, resolve_checkpoint
from ..pair import ClassSet
from ..reports.geojson import instances_to_geojson, write_geojson
from .device import to_device
from .tta import as_transforms, average
from .watershed import (
    WatershedConfig,
    classify_instances,
    instances_from_maps,
    nucleus_table,
)

__all__ = ["NucleiPrediction", "NucleiPredictor", "OUTPUT_FORMATS"]

OUTPUT_NAMES = NUCLEI_OUTPUT_NAMES
"""File name per output format of :meth:`NucleiPrediction.write`."""


@dataclass
class NucleiPrediction:
    """Instances and classes of one tile. ``inst_map`` ``(H, W)`` int32 (ids 1..n, 0 =
    background); ``inst_class`` ``{id: class id}``; ``probability`` ``{id: vote share}``;
    ``maps``: the model's per-pixel maps (``class_prob`` ``(C+1, H, W)``, ``foreground``
    and, when predicted, ``distance``), kept only when asked for."""

    id: str
    inst_map: np.ndarray
    inst_class: dict[int, int]
    probability: dict[int, float]
    classes: ClassSet
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return len(self.inst_class)

    def sample(self, image: np.ndarray | None = None) -> NucleiSample:
        """As a :class:`NucleiSample` (for scoring; ``image`` defaults to a blank tile)."""
        if image is None:
            image = np.zeros(self.inst_map.shape + (3,), np.uint8)
        return NucleiSample(self.id, image, self.inst_map, dict(self.inst_class), self.classes)

    def table(self) -> list[dict[str, Any]]:
        """One row per nucleus: id, centroid_x/y, bbox (x0, y0, x1, y1), area, class, class_name, probability."""
        votes = {i: (c, self.probability.get(i)) for i, c in self.inst_class.items()}
        rows = nucleus_table(self.inst_map, votes)
        for r in rows:
            r["class_name"] = self.classes.name(r["class"]) if r["class"] in self.classes.ids else None
        return rows

    def table_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "centroid_x", "centroid_y", "x0", "y0", "x1", "y1", "area", "class", "class_name", "probability"])
        for r in self.table():
            w.writerow([r["id"], f"{r['centroid_x']:.2f}", f"{r['centroid_y']:.2f}", *r["bbox"], r["area"],
                        r["class"], r["class_name"], "" if r["probability"] is None else f"{r['probability']:.4f}"])
        return buf.getvalue()

    def geojson(self, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> dict:
        """QuPath-compatible FeatureCollection (``offset``/``scale`` map tile px to slide px)."""
        votes = {i: (c, self.probability.get(i, 1.0)) for i, c in self.inst_class.items()}
        return instances_to_geojson(self.inst_map, votes, self.classes, offset=offset, scale=scale)

    def write(self, folder: str | Path, formats: Iterable[str] = OUTPUT_FORMATS, image: np.ndarray | None = None) -> list[Path]:
        """Write each format (atomically) into ``folder``; returns the paths. File names
        (:data:`OUTPUT_NAMES`): ``<id>_instances.npy``/``.tif`` (instance map),
        ``<id>_nuclei.csv`` (table), ``<id>.geojson``, ``<id>.mat``. The instance-map files
        do not share the tile's stem, so CoNSeP readers never take them for its image."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            if fmt not in OUTPUT_NAMES:
                raise ValueError(f"unknown output format {fmt!r}; choose from {OUTPUT_FORMATS}")
            path = folder / OUTPUT_NAMES[fmt].format(id=self.id)
            if fmt == "npy":
                with atomic_open(path, "wb") as fh:
                    np.save(fh, self.inst_map.astype(np.int32))
            elif fmt == "tif":
                import tifffile

                with atomic_open(path, "wb") as fh:
                    tifffile.imwrite(fh, self.inst_map.astype(np.int32), compression="zlib")
            elif fmt == "csv":
                write_text(path, self.table_csv())
            elif fmt == "geojson":
                write_geojson(path, self.geojson())
            elif fmt == "mat":
                write_consep_mat(path, self.sample(image))
            written.append(path)
        return written


class NucleiPredictor:
    """Runs a nuclei model over tiles (see the module doc).

    ``classes``: the nucleus classes of the model's output channels 1..C (channel k =
    ``classes.ids[k-1]``). ``watershed``: post-processing settings. ``keep_maps``: keep the
    per-pixel maps in each prediction. Tiles are padded to ``multiple``, the model's
    ``size_multiple`` (1 for a model without one).
    """

    def __init__(self, model: torch.nn.Module, classes: ClassSet, watershed: WatershedConfig | None = None,
                 device: str | torch.device = "cpu", tta: bool = False, amp: bool | None = None, keep_maps: bool = False,
                 engine: str = "torch", compile: bool = False):
        from .device import maybe_compile
        from .engines import engine_model

        self.device = torch.device(device)
        self.engine = engine
        self.model = engine_model(model, engine).to(self.device).eval()
        self.net = maybe_compile(self.model, bool(compile and engine == "torch"))  # what runs the forward
        self.multiple = int(getattr(model, "size_multiple", 1))
        self.classes = classes
        self.watershed = watershed or WatershedConfig()
        self.tta = tta
        self.amp = (self.device.type == "cuda") if amp is None else amp
        self.keep_maps = keep_maps

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs: Any) -> NucleiPredictor:
        """From a training run folder (its ``best.ckpt``) or a checkpoint folder; the class set
        and the watershed settings come from the checkpoint unless given."""
        ckpt = resolve_checkpoint(path)
        _, meta = load_config(ckpt)
        extra = meta.get("extra") or {}
        if "classes" not in kwargs:
            if not extra.get("classes"):
                raise InputError(ckpt, "checkpoint has no nucleus class set (extra.classes); pass classes=")
            kwargs["classes"] = ClassSet.from_dict(extra["classes"])
        if "watershed" not in kwargs and extra.get("watershed"):
            kwargs["watershed"] = WatershedConfig(**extra["watershed"])
        return cls(from_pretrained(ckpt, map_location=device), device=device, **kwargs)

    # ------------------------------------------------------------------ maps
    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (self.amp and self.device.type == "cuda") else nullcontext()
        with torch.no_grad(), ctx:
            out = self.net(to_device(x, self.device))
        maps = {"class_prob": torch.softmax(out["class_logits"].float(), dim=1)}
        if "binary_logits" in out:
            maps["foreground"] = torch.sigmoid(out["binary_logits"].float())[:, 0]
        else:
            maps["foreground"] = 1.0 - maps["class_prob"][:, 0]
        if "distance" in out:
            maps["distance"] = out["distance"].float()[:, 0]
        return maps

    def maps(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Per-pixel maps of one ``(H, W, 3)`` uint8 tile: ``class_prob`` ``(C+1, H, W)``,
        ``foreground`` ``(H, W)`` and, for models that predict one, ``distance`` ``(H, W)``."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(None, f"image must be (H, W, 3) uint8, got shape {img.shape} dtype {img.dtype}")
        h, w = img.shape[:2]
        x = image_tensor(img)[None].to(self.device)
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        return {name: m[0][..., :h, :w].cpu().numpy() for name, m in self.batch_maps(x).items()}

    def batch_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps of :meth:`maps` for a batch ``(B, 3, H, W)`` of normalised images on the
        device (:func:`~histozoom.data.samples.image_tensor`; sides multiples of
        :attr:`multiple`): ``class_prob`` ``(B, C+1, H, W)``, ``foreground`` ``(B, H, W)`` and
        ``distance`` ``(B, H, W)`` when predicted; averaged over the TTA transforms."""
        mean = average(self._forward, x, as_transforms(self.tta))
        n_classes = len(self.classes) + 1
        if mean["class_prob"].shape[1] != n_classes:
            raise InputError(None, f"model predicts {mean['class_prob'].shape[1]} class channels, "
                                   f"the class set needs {n_classes} (background + {len(self.classes)})")
        return mean

    # ------------------------------------------------------------------ instances
    def postprocess(self, maps: dict[str, np.ndarray], sample_id: str = "") -> NucleiPrediction:
        """Instances and classes from :meth:`maps` (see the module doc)."""
        inst = instances_from_maps(maps["foreground"], maps.get("distance"), self.watershed)
        lut = np.asarray(self.classes.ids, np.int64)
        nucleus_class = lut[np.argmax(maps["class_prob"][1:], axis=0)]  # background excluded
        votes = classify_instances(inst, nucleus_class, self.classes)
        return NucleiPrediction(sample_id, inst, {i: c for i, (c, _) in votes.items()},
                                {i: p for i, (_, p) in votes.items()}, self.classes,
                                dict(maps) if self.keep_maps else {})

    def predict(self, image: np.ndarray, sample_id: str = "") -> NucleiPrediction:
        return self.postprocess(self.maps(image), sample_id)

    def predict_samples(self, samples: Sequence[NucleiSample] | Iterable[NucleiSample],
                        progress: bool = False) -> list[NucleiPrediction]:
        """Predictions for samples (any iterable of :class:`NucleiSample`), in order."""
        it: Any = samples
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(samples, desc="predict", total=len(samples) if hasattr(samples, "__len__") else None)
        return [self.predict(s.image, s.id) for s in it]
