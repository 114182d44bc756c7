"""Cell detections from a trained cell–tissue model: pairs in, points in original pixels out.

>>> pred = Predictor.from_checkpoint("RUN")                 # RUN/best.ckpt, or a save_pretrained dir
>>> result = pred.predict_split(open_dataset("DATA").split("test"))
>>> result.write_challenge_json("P.json")                  # image_K = K-th sample id in sorted order
>>> result.write_csv_folder("P_csv/")                      # one SAMPLE_ID.csv per image: x,y,class,prob
>>> rows = result.rows()                                   # the detections table

Pipeline per pair (:meth:`Predictor.probabilities`):

1. ``size`` given: both views resized to ``size``×``size`` (:func:`~histozoom.data.samples.resize_pair`;
   ``size`` must be a multiple of the model's ``size_multiple``); then each view padded
   right/bottom (edge-replicated) to a multiple of what the model asks of it
   (``cell_size_multiple``, ``tissue_size_multiple``) where needed, the placement widened
   to match; detections in the padding are dropped, maps cropped back.
2. Test-time augmentation (``tta=True``): the 8 flips/rotations of the dihedral group
   (:mod:`histozoom.inference.tta`), applied to both views, their placement and the
   tissue mask with the augment module's pair transforms (:func:`dihedral_pair`); each
   cell probability map is mapped back (:func:`~histozoom.inference.tta.invert`) and the
   maps are averaged (:class:`~histozoom.inference.tta.MapMean`).
3. Decoding (:func:`~histozoom.inference.decode.decode_cells_torch`) at the model's
   resolution, with the resized mpp, so ``PeakConfig``'s µm mean the same at every size.
4. Back to the original cell image: continuous pixel-centre convention,
   ``x_orig = (x + 0.5) · s − 0.5`` with ``s = original width / model width`` (same for y),
   clipped to the image. Points stay floats here; writers round them (challenge JSON and
   CSV hold integer pixels).

Tissue-label leaking models read the ground-truth tissue mask of each pair (an error
names the pair when it has none).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_dir, atomic_open, check_output
from ..data.augment import flip_pair_lr, rot90_pair
from ..data.base import DatasetSpec, PairSplit
from ..data.challenge_json import challenge_document, image_name, write_challenge_points
from ..data.normalize import normalize_pair
from ..data.samples import image_tensor, resize_pair
from ..data.targets import tissue_mask_in_cell_frame
from ..errors import InputError
from ..geometry import Placement
from ..models.cell_tissue import cell_probability_map
from ..pair import (
    OCELOT_CELL_CLASSES,
    OCELOT_TISSUE_CLASSES,
    UNKNOWN,
    ClassSet,
    Pair,
    Points,
)
from .decode import PeakConfig, decode_cells_torch
from .tta import MapMean, as_transforms


# ---------------------------------------------------------------------- pair transforms
def dihedral_pair(pair: Pair, flip: bool, k: int) -> Pair:
    """Transform ``(flip, k)`` of :mod:`~histozoom.inference.tta` on a pair: flip
    left-right (if ``flip``), then rotate by ``k`` × 90° — both views, labels, placement.
    Maps predicted on the result go back with :func:`~histozoom.inference.tta.invert`."""
    if flip:
        pair = flip_pair_lr(pair)
    return rot90_pair(pair, k)


def input_multiples(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(cell, tissue, both)``: what the cell view's sides, the tissue view's sides and
    one size for both views must be multiples of, as the model says
    (``cell_size_multiple``, ``tissue_size_multiple``, ``size_multiple`` of a
    :class:`~histozoom.models.cell_tissue.CellTissueModel`). A model without them (any
    module with the same forward) constrains nothing unless it has ``size_multiple``."""
    both = int(getattr(model, "size_multiple", 1))
    cell = int(getattr(model, "cell_size_multiple", both))
    tissue = int(getattr(model, "tissue_size_multiple", both))
    return cell, tissue, both


def pad_pair(pair: Pair, multiple: int, fill_mask: int = UNKNOWN,
             tissue_multiple: int | None = None) -> tuple[Pair, tuple[int, int]]:
    """Pad the cell view right/bottom to multiples of ``multiple`` and the tissue view to
    multiples of ``tissue_multiple`` (default: ``multiple``); edge-replicated images,
    ``fill_mask`` in the tissue mask. The placement grows with the cell view so the
    geometry is unchanged. Returns ``(padded pair, original cell size)``."""
    tissue_multiple = multiple if tissue_multiple is None else tissue_multiple
    cw, ch = pair.cell_size
    tw, th = pair.tissue_size
    pcw, pch = -(-cw // multiple) * multiple, -(-ch // multiple) * multiple
    ptw, pth = -(-tw // tissue_multiple) * tissue_multiple, -(-th // tissue_multiple) * tissue_multiple
    if (pcw, pch, ptw, pth) == (cw, ch, tw, th):
        return pair, (cw, ch)
    pl = pair.placement
    pad = lambda a, w, h, mode, **kw: a if a is None or a.shape[:2] == (h, w) else np.pad(  # noqa: E731
        a, [(0, h - a.shape[0]), (0, w - a.shape[1])] + [(0, 0)] * (a.ndim - 2), mode=mode, **kw)
    return pair.replace(
        cell_image=pad(pair.cell_image, pcw, pch, "edge"),
        tissue_image=pad(pair.tissue_image, ptw, pth, "edge"),
        tissue_mask=pad(pair.tissue_mask, ptw, pth, "constant", constant_values=fill_mask),
        placement=Placement(pl.x0, pl.y0, pl.width * pcw / cw, pl.height * pch / ch, (pcw, pch), (ptw, pth)),
    ), (cw, ch)


def to_original(xy: np.ndarray, model_size: tuple[int, int], orig_size: tuple[int, int]) -> np.ndarray:
    """Points in a resized image's pixels → the original image's pixels (pixel-centre
    convention ``x' = (x + 0.5) · s − 0.5``), clipped to the original image."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    s = np.array([orig_size[0] / model_size[0], orig_size[1] / model_size[1]])
    out = (xy + 0.5) * s - 0.5
    return np.clip(out, 0.0, np.array(orig_size, dtype=np.float64) - 1.0)


def pair_from_images(
    cell_image: str | Path | np.ndarray,
    tissue_image: str | Path | np.ndarray,
    offset: tuple[float, float] = (0.5, 0.5),
    cell_mpp: float = 0.2,
    tissue_mpp: float = 0.8,
    pair_id: str = "000",
    tissue_mask: str | Path | np.ndarray | None = None,
) -> Pair:
    """One pair from two images (files or ``(H, W, 3)`` uint8 arrays).

    ``offset``: the cell view's centre as a fraction of the tissue image (OCELOT's
    ``patch_x_offset``/``patch_y_offset``); ``cell_mpp``/``tissue_mpp`` give the window's
    size. The window must lie inside the tissue image.
    """
    from ..data.io import read_label_map, read_rgb

    cell = read_rgb(cell_image) if isinstance(cell_image, (str, Path)) else np.asarray(cell_image)
    tissue = read_rgb(tissue_image) if isinstance(tissue_image, (str, Path)) else np.asarray(tissue_image)
    for label, a in (("cell image", cell), ("tissue image", tissue)):
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise InputError(None, f"{label}: expected (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
    if not (cell_mpp > 0 and tissue_mpp > 0):
        raise InputError(None, f"mpp must be positive, got cell {cell_mpp}, tissue {tissue_mpp}")
    p = Placement.from_centre(tuple(offset), (cell.shape[1], cell.shape[0]), (tissue.shape[1], tissue.shape[0]),
                              cell_mpp, tissue_mpp)
    if not p.inside_tissue(tol=1.0):
        where = cell_image if isinstance(cell_image, (str, Path)) else None
        raise InputError(where, f"the cell window {p.window_int()} (offset {tuple(offset)}, mpp {cell_mpp}/{tissue_mpp}) "
                                f"lies outside the {tissue.shape[1]}x{tissue.shape[0]} tissue image")
    mask = None
    if tissue_mask is not None:
        mask = read_label_map(tissue_mask) if isinstance(tissue_mask, (str, Path)) else np.asarray(tissue_mask, np.uint8)
    return Pair(pair_id, np.ascontiguousarray(cell), np.ascontiguousarray(tissue), p, tissue_mask=mask,
                cell_mpp=float(cell_mpp), tissue_mpp=float(tissue_mpp))


# ---------------------------------------------------------------------- results
@dataclass
class Predictions:
    """Detections per image index (original cell-image pixels, float coordinates).

    ``ids[k]`` is the sample id of ``image_k``; ``sizes[k]`` its ``(width, height)``;
    ``organs[k]`` its organ where known.
    """

    points: dict[int, Points]
    ids: list[str]
    classes: ClassSet = OCELOT_CELL_CLASSES
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    organs: dict[int, str] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def rounded(self) -> dict[int, Points]:
        """Points at integer pixels, as the writers store them (so in-memory scores equal
        the scores of the written files)."""
        return {k: p.with_xy(np.rint(p.xy)) for k, p in self.points.items()}

    def challenge_document(self) -> dict:
        return challenge_document(self.points, num_images=len(self.ids))

    def write_challenge_json(self, path: str | Path) -> Path:
        """The challenge's "Multiple points" JSON (atomic); ``image_K`` = ``ids[K]``."""
        write_challenge_points(path, self.points, num_images=len(self.ids))
        return Path(path)

    def write_csv_folder(self, folder: str | Path) -> Path:
        """``FOLDER/<sample id>.csv`` with rows ``x,y,class,prob`` (integer pixels).

        The folder appears whole or not at all (written aside, then renamed), so a killed
        run never leaves a partial folder that would be scored as "no detections". An
        existing folder is replaced only if it holds nothing but ``.csv`` files.
        """
        from ..data.io import write_points_csv

        folder = check_output(folder, "folder")
        if folder.is_dir():
            other = next((p for p in folder.iterdir() if not (p.is_file() and p.suffix.lower() == ".csv")), None)
            if other is not None:
                raise InputError(folder, f"exists and holds {other.name!r}, not only CSV files: "
                                         "give a new folder for the CSV output")
        with atomic_dir(folder) as tmp:
            for k, sid in enumerate(self.ids):
                write_points_csv(tmp / f"{sid}.csv", self.points.get(k, Points.empty()), with_prob=True)
        return folder

    def rows(self) -> list[dict[str, Any]]:
        """One dict per detection: image, image_name, sample_id, organ, x, y (original
        pixels, float), class_id, class_name, probability."""
        out = []
        for k, sid in enumerate(self.ids):
            pts = self.points.get(k)
            if pts is None:
                continue
            for (x, y), c, p in zip(pts.xy.tolist(), pts.cls.tolist(), pts.prob.tolist()):
                out.append({"image": k, "image_name": image_name(k), "sample_id": sid, "organ": self.organs.get(k, ""),
                            "x": x, "y": y, "class_id": int(c), "class_name": self.classes.name(c), "probability": p})
        return out

    def write_table(self, path: str | Path) -> Path:
        """All detections as one CSV table (columns of :meth:`rows`; atomic)."""
        cols = ["image", "image_name", "sample_id", "organ", "x", "y", "class_id", "class_name", "probability"]
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows())
        return Path(path)


# ---------------------------------------------------------------------- the predictor
class _PairViews(Dataset):
    """Loads, resizes, pads and transforms pairs; one item per pair (no stacking)."""

    def __init__(self, pairs: Sequence[Pair] | PairSplit, size: int | None, transforms, mask: str | None,
                 multiples: tuple[int, int] = (1, 1), normalize: str = "none"):
        self.pairs = pairs
        self.normalize = normalize
        self.size = size
        self.transforms = transforms
        self.mask = mask  # None, "tissue" (tissue-frame mask) or "cell" (cropped to the window)
        self.multiples = multiples  # (cell view, tissue view) side multiples of the model

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        pair = normalize_pair(self.pairs[k], self.normalize)
        orig = pair.cell_size
        if self.size is not None:
            pair = resize_pair(pair, (self.size, self.size), (self.size, self.size))
        pair, model_size = pad_pair(pair, self.multiples[0], tissue_multiple=self.multiples[1])
        if self.mask is not None and pair.tissue_mask is None:
            raise InputError(None, f"pair {pair.id!r}: the model reads ground-truth tissue labels "
                                   "(tissue-label leaking) but the pair has no tissue mask")
        views = []
        for flip, rot in self.transforms:
            p = dihedral_pair(pair, flip, rot)
            v = {"cell_image": image_tensor(p.cell_image), "tissue_image": image_tensor(p.tissue_image),
                 "windows": torch.tensor(p.placement.fractions(), dtype=torch.float32)}
            if self.mask == "tissue":
                v["tissue_mask"] = torch.from_numpy(p.tissue_mask.astype(np.int64))
            elif self.mask == "cell":
                v["tissue_mask"] = torch.from_numpy(tissue_mask_in_cell_frame(p.tissue_mask, p.placement).astype(np.int64))
            views.append(v)
        return {"index": k, "id": pair.id, "organ": pair.organ, "orig_size": orig, "model_size": model_size,
                "cell_mpp": pair.cell_mpp, "views": views}


def _as_list(items):
    return items


class Predictor:
    """Runs a cell–tissue model on pairs and decodes cell detections.

    ``model``: a :class:`~histozoom.models.cell_tissue.CellTissueModel` (or anything with
    its forward signature and ``.config``; its input constraints are read with
    :func:`input_multiples`). ``spec``: the training dataset's spec (its
    ``cell_classes`` give the output channels' class ids; default OCELOT). ``size``:
    resize both views to ``size``×``size`` before the model (``None``: as stored, any
    size: each view is padded to the model's multiple); it must be a multiple of the
    model's ``size_multiple`` (``ValueError`` naming the model otherwise).
    ``peak_cfg``: decoding. ``tta``: average over the 8 flips/rotations (or give a list
    of ``(flip, k)``). ``amp``: bf16 autocast (default: on CUDA). ``engine``: what runs
    the network (:data:`~histozoom.inference.engines.ENGINES`; non-torch engines on the CPU);
    ``compile``: ``torch.compile`` its forward (torch engine). ``normalize``: the input
    normalisation the model was trained with (:mod:`histozoom.data.normalize`; from the
    checkpoint by :meth:`from_checkpoint`). The model's ``cell_output`` (softmax, heatmap
    or, for an :class:`~histozoom.inference.ensemble.EnsembleNet`, probabilities) says how
    its ``cell_logits`` become the probability map (:func:`~histozoom.models.cell_tissue.cell_probability_map`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: DatasetSpec | None = None,
        size: int | None = None,
        peak_cfg: PeakConfig = PeakConfig(),  # noqa: B008 - frozen dataclass, safe to share
        device: str | torch.device = "cpu",
        tta: bool | Sequence[tuple[bool, int]] = False,
        batch_size: int = 4,
        num_workers: int = 0,
        amp: bool | None = None,
        engine: str = "torch",
        compile: bool = False,
        normalize: str = "none",
        fusion: str | None = None,
        tissue_model: torch.nn.Module | None = None,
        fusion_mapping: dict[int, int] | None = None,
    ):
        from .device import maybe_compile
        from .engines import engine_model

        cell_m, tissue_m, both_m = input_multiples(model)
        if size is not None and (size < both_m or size % both_m):
            name = getattr(getattr(model, "config", None), "name", type(model).__name__)
            raise ValueError(f"size must be a multiple of {both_m} (the input size multiple of model "
                             f"{name!r}), got {size}")
        self.multiples = (cell_m, tissue_m)
        self.normalize = normalize
        self.cell_output = getattr(model, "cell_output", "softmax")
        self.device = torch.device(device)
        self.engine = engine
        self.model = engine_model(model, engine).to(self.device)
        self.compiled = bool(compile and engine == "torch")
        self.net = maybe_compile(self.model, self.compiled)  # what runs the forward
        self.spec = spec or DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)
        self.size = size
        self.peak_cfg = peak_cfg
        self.transforms = as_transforms(tta)
        self.batch_size = max(1, int(batch_size))
        self.num_workers = num_workers
        self.amp = (self.device.type == "cuda") if amp is None else amp
        cfg = getattr(model, "config", None)
        self.mask = None
        if cfg is not None and getattr(cfg, "leak_tissue_labels", False):
            self.mask = "cell" if getattr(cfg, "tissue_input", "tissue") == "cell" else "tissue"
        self._setup_fusion(fusion, tissue_model, fusion_mapping)

    def _setup_fusion(self, fusion: str | None, tissue_model: torch.nn.Module | None,
                      mapping: dict[int, int] | None) -> None:
        """Post-hoc tissue→cell fusion (:mod:`~histozoom.inference.fusion`): the tissue
        probabilities come from ``tissue_model.tissue_probabilities`` when given, else from
        the model's own tissue branch."""
        from .fusion import FUSIONS, default_mapping, vote_matrix

        self.fusion = fusion
        self.tissue_model = tissue_model
        if fusion is None:
            return
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if tissue_model is None and getattr(self.model, "tissue", None) is None:
            raise ValueError("fusion needs a tissue prediction: the model has no tissue branch; "
                             "give a tissue model (a checkpoint with a tissue branch)")
        if tissue_model is not None and not getattr(tissue_model, "tissue_standalone", False):
            raise ValueError("the tissue model must predict tissue from the tissue view alone "
                             "(a checkpoint whose tissue branch reads no cell features or labels)")
        tissue_classes = self.spec.tissue_classes
        if tissue_classes is None:
            raise ValueError("fusion needs the model's tissue classes (its training dataset had none)")
        mapping = mapping if mapping is not None else default_mapping(self.spec.cell_classes, tissue_classes)
        self.votes = vote_matrix(mapping, self.spec.cell_classes, tissue_classes)
        self.tissue_model = None if tissue_model is None else tissue_model.to(self.device).eval()

    @property
    def classes(self) -> ClassSet:
        return self.spec.cell_classes

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", size: int | None | str = "train", **kwargs) -> Predictor:
        """A predictor for a saved model: ``path`` is a training run folder (its
        ``best.ckpt``) or a ``save_pretrained`` folder. ``size="train"`` (default) predicts
        at the size the model was trained at (recorded in the checkpoint); ``None`` at the
        stored size; an int at that size. Peak settings and input normalisation default to
        the training run's."""
        from ..models.checkpoint import from_pretrained, load_config, resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        _, meta = load_config(ckpt)
        return cls._with_extra(from_pretrained(ckpt, map_location=device), meta.get("extra") or {}, device, size,
                               kwargs)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str = "cpu", size: int | None | str = "train",
                         **kwargs) -> Predictor:
        """One checkpoint: :meth:`from_checkpoint`. Several: their ensemble
        (:class:`~histozoom.inference.ensemble.EnsembleNet`, probability maps averaged
        before decoding), with the first member's classes, size, peak settings and
        normalisation (the members must share them)."""
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], device=device, size=size, **kwargs)
        from .ensemble import load_ensemble, member_extras

        extra = member_extras(paths[:1])[0][1]
        return cls._with_extra(load_ensemble(paths, device), extra, device, size, kwargs)

    @classmethod
    def _with_extra(cls, model: torch.nn.Module, extra: dict, device: str, size: int | None | str,
                    kwargs: dict) -> Predictor:
        spec = DatasetSpec.from_dict(extra["spec"]) if extra.get("spec") else None
        if size == "train":
            size = extra.get("size")
        if "peak_cfg" not in kwargs and extra.get("peak"):
            kwargs["peak_cfg"] = PeakConfig(**extra["peak"])
        kwargs.setdefault("normalize", extra.get("normalize", "none"))
        return cls(model, spec, size=size, device=device, **kwargs)

    # ------------------------------------------------------------------ running
    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _forward(self, views: list[dict]) -> torch.Tensor:
        """Cell probabilities ``(B, 1 + C, H, W)`` (float32) for a list of same-shape views."""
        batch = {key: torch.stack([v[key] for v in views]).to(self.device, non_blocking=True) for key in views[0]}
        cell, tissue = batch["cell_image"], batch["tissue_image"]
        if self.device.type == "cuda":
            cell = cell.contiguous(memory_format=torch.channels_last)
            tissue = tissue.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.net(cell, tissue, batch["windows"], batch.get("tissue_mask"))
            prob = cell_probability_map(out["cell_logits"], self.cell_output)
            if self.fusion is None:
                return prob
            t = (self.tissue_model.tissue_probabilities(tissue) if self.tissue_model is not None
                 else out["tissue_logits"].float().softmax(dim=1))
        from ..geometry import tissue_to_cell
        from .fusion import fuse

        t_cell = tissue_to_cell(t.float(), batch["windows"], tuple(prob.shape[-2:]), mode="bilinear")
        return fuse(prob, t_cell, self.votes, self.fusion)

    def _probabilities(self, items: list[dict]) -> list[torch.Tensor]:
        """Averaged (TTA) probability maps per item, in the (padded) model frame."""
        acc = [MapMean() for _ in items]
        for t, transform in enumerate(self.transforms):
            groups: dict[tuple, list[int]] = {}
            for i, it in enumerate(items):
                views = it["views"][t]
                groups.setdefault(tuple(views["cell_image"].shape) + tuple(views["tissue_image"].shape), []).append(i)
            for idx in groups.values():
                prob = self._forward([items[i]["views"][t] for i in idx])
                for j, i in enumerate(idx):
                    acc[i].add(prob[j], transform)
        return [a.mean() for a in acc]  # type: ignore[misc]

    def _decode(self, item: dict, prob: torch.Tensor) -> Points:
        pts = decode_cells_torch(prob[None], self.classes, self.peak_cfg, item["cell_mpp"])[0]
        mw, mh = item["model_size"]
        keep = (pts.xy[:, 0] < mw) & (pts.xy[:, 1] < mh)  # drop detections in the padding
        pts = pts.subset(keep)
        return pts.with_xy(to_original(pts.xy, (mw, mh), item["orig_size"]))

    def _run(self, pairs: Sequence[Pair] | PairSplit, progress: bool = False, desc: str = "predict"):
        ds = _PairViews(pairs, self.size, self.transforms, self.mask, self.multiples, self.normalize)
        loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            collate_fn=_as_list, persistent_workers=False, pin_memory=self.device.type == "cuda")
        was_training = self.model.training
        self.model.eval()
        try:
            it = loader
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
            with torch.inference_mode():
                for items in it:
                    probs = self._probabilities(items)
                    yield from zip(items, probs)
        finally:
            self.model.train(was_training)

    def probabilities(self, pairs: Sequence[Pair]) -> list[np.ndarray]:
        """``(1 + C, H, W)`` cell probability maps at the model's resolution (padding removed)."""
        out = []
        for item, prob in self._run(pairs):
            mw, mh = item["model_size"]
            out.append(prob[:, :mh, :mw].cpu().numpy())
        return out

    def predict_pairs(self, pairs: Sequence[Pair], progress: bool = False) -> list[Points]:
        """Detections per pair, in each original cell image's pixels."""
        return [self._decode(item, prob) for item, prob in self._run(pairs, progress)]

    def predict_pair(self, pair: Pair) -> Points:
        return self.predict_pairs([pair])[0]

    def predict_split(self, split: PairSplit | Sequence[Pair], progress: bool = False) -> Predictions:
        """Detections for every pair of a split; ``image_K`` is ``split.ids[K]``."""
        points, sizes, organs, ids = {}, {}, {}, []
        for item, prob in self._run(split, progress, desc=f"predict {getattr(split, 'name', '')}".strip()):
            k = item["index"]
            points[k] = self._decode(item, prob)
            sizes[k] = tuple(item["orig_size"])
            if item["organ"]:
                organs[k] = item["organ"]
            ids.append(item["id"])
        if isinstance(split, PairSplit):
            ids = list(split.ids)
        return Predictions(points, ids, self.classes, sizes, organs, str(getattr(split, "name", "")))
