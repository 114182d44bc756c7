"""Nuclei grading over whole slides: CHR-Net at high magnification, inside the cancer area
that an OCELOT tissue branch finds at low magnification.

>>> sp = NucleiSlidePredictor.from_checkpoint("CHRNET_RUN", tissue_checkpoint="OCELOT_RUN")
>>> summary = sp.predict_slide("slide.svs", "OUT/slide")   # nuclei.parquet, nuclei.geojson, summary.json, grades.png

Per slide (the machinery of :mod:`.job`, shared with cell detection):

1. **Where**: tissue on a thumbnail (∩ ``roi``); nuclei tiles of ``tile`` px at the
   checkpoint's µm/px (400x ≈ 0.25) with ``margin`` px on each side
   (:class:`NucleiSlideSettings`); the 100x view of CHR-Net is made inside the model from
   each tile, as in training.
2. **Cancer area**: with a tissue checkpoint, its tissue branch runs once over the region
   at its own µm/px into the stitched map of :mod:`.tissue_pass`; each nucleus takes the
   tissue class under its centroid. Without one, the region (tissue ∩ ROI) counts as inside.
3. **Nuclei per tile**: the model's maps → watershed instances → class by majority vote
   (:class:`~histozoom.inference.nuclei_predictor.NucleiPredictor`, the tile predictor
   itself). **Seam rule**: a nucleus belongs to the one tile whose *core* holds its
   centroid and is taken whole from that tile (the tiles overlap by ``2·margin`` px, more
   than a nucleus), so it is never reported twice or in halves. Tiles sample one pixel
   grid with cores a multiple of the model's stride, so a translation-equivariant model
   gives exactly the single-pass instances. Where two tiles' segmentations of a seam still
   disagree, :mod:`.nuclei_outputs` resolves the overlap.
4. **Streams and resume**: post-processing of a batch runs in a thread while the model
   runs on the next; each batch's nuclei (with masks and outlines) go to the journal
   ``.work/parts/bNNNNNN.parquet``.
5. **Outputs** (:mod:`.nuclei_outputs`): ``nuclei.parquet``, ``nuclei.geojson``,
   ``nuclei.csv`` on request, ``summary.json`` (grading), ``grades.png``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.samples import image_tensor
from ..errors import ConfigError, InputError
from ..evaluation.grading import GradingRule
from ..inference.device import to_device
from ..inference.nuclei_predictor import NucleiPredictor
from .job import (
    ModelClock,
    Prepared,
    Region,
    SlideOptions,
    SlidePass,
    check_resolution,
    find_region,
    run_slide,
    slide_pass,
    start_work,
)
from .reader import Slide, open_slide
from .tissue_map import TissueMap
from .tissue_pass import TissueView, stitch_tissue_map

__all__ = ["DEFAULT_MPP", "NucleiSlidePredictor", "NucleiSlideSettings"]

DEFAULT_MPP = 0.25
"""µm/px of a nuclei checkpoint that does not record its data's (400x, as in CHR-Net)."""


@dataclass(frozen=True)
class NucleiSlideSettings:
    """Model-side reading settings: tiles of ``tile`` px at ``mpp`` µm/px, ``margin`` px on
    each side belonging to the neighbours (the tiles overlap by ``2·margin``); ``multiple``:
    the model's stride (tile and core must be multiples of it, so that all tiles sample one
    grid of the model's output the same way)."""

    mpp: float
    tile: int = 512
    margin: int = 64
    multiple: int = 32

    def __post_init__(self):
        if not (0.01 <= self.mpp <= 100):
            raise ConfigError(f"nuclei slide mpp must be in [0.01, 100] µm/px, got {self.mpp}")
        core = self.tile - 2 * self.margin
        if self.margin < 0 or core < self.multiple:
            raise ConfigError(f"nuclei tile {self.tile} px with margin {self.margin} px leaves no core")
        if self.tile % self.multiple or core % self.multiple:
            raise ConfigError(f"nuclei tile ({self.tile} px) and core ({core} px) must be multiples of the model's "
                              f"stride {self.multiple}")

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TissueModel:
    """An OCELOT model's tissue branch for the cancer area: ``probabilities`` (image batch →
    softmax), how it reads (``view``), its tissue classes and checkpoint."""

    probabilities: object
    view: TissueView
    classes: object
    checkpoint: str
    clock_factory: object


def load_tissue_model(path: str | Path, device: str = "cpu", engine: str = "torch", compile: bool = False) -> TissueModel:
    """The tissue branch of the OCELOT checkpoint ``path``, refused with a clear error when
    it has none (cell-only) or cannot run alone (feature sharing with cell→tissue links)."""
    from ..models.checkpoint import load_config, require_family, resolve_checkpoint
    from .runner import SlidePredictor

    ckpt = resolve_checkpoint(path)
    _, meta = load_config(ckpt)
    require_family(ckpt, meta, "cell-tissue", "--tissue-checkpoint takes an OCELOT checkpoint with a tissue branch")
    sp = SlidePredictor.from_checkpoint(ckpt, device=device, engine=engine, compile=compile)
    model = sp.model
    name = meta.get("model_name") or "this model"
    if getattr(model, "tissue", None) is None:
        raise InputError(ckpt, f"{name} has no tissue branch, so it cannot find the cancer area "
                               f"(--tissue-checkpoint needs e.g. a pred-to-* model)")
    if not getattr(model, "tissue_standalone", False):
        raise InputError(ckpt, f"{name}'s tissue branch needs the cell branch's features (cell→tissue links); "
                               f"it cannot map the cancer area on its own")
    classes = sp.predictor.spec.tissue_classes
    st = sp.settings
    view = TissueView(st.tissue_mpp, st.tissue_tile, st.tissue_margin, len(classes or ()))
    return TissueModel(sp._tissue_probabilities, view, classes, str(ckpt),
                       lambda: ModelClock(sp.predictor.device, sp.predictor._autocast))


class NucleiSlidePredictor:
    """Slide inference for a nuclei model (``nuclei``: its tile
    :class:`~histozoom.inference.nuclei_predictor.NucleiPredictor`), optionally with a
    ``tissue`` model for the cancer area; ``grading``: the slide-grade rule."""

    TABLE_COLUMNS = ("slide", "status", "nuclei", "tumour_nuclei_inside", "G1", "G2", "G3", "slide_grade",
                     "tissue_area_mm2", "seconds", "error")

    def __init__(self, nuclei: NucleiPredictor, settings: NucleiSlideSettings, checkpoint: str = "",
                 tissue: TissueModel | None = None, grading: GradingRule | None = None, mpp_source: str = "checkpoint"):
        self.nuclei = nuclei
        self.settings = settings
        self.checkpoint = checkpoint
        self.tissue = tissue
        self.grading = grading or GradingRule()
        self.mpp_source = mpp_source
        self.factory: Callable[[], NucleiSlidePredictor] | None = None
        """Builds this runner again in another process (set by :meth:`from_checkpoint`)."""
        if settings.multiple % nuclei.multiple:
            raise ConfigError(f"settings.multiple {settings.multiple} is not a multiple of the model's {nuclei.multiple}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, tissue_checkpoint: str | Path | None = None, device: str = "cpu",
                        tile: int | None = None, margin: int | None = None,
                        grading: GradingRule | None = None, engine: str = "torch",
                        compile: bool = False) -> NucleiSlidePredictor:
        """From a nuclei training run or checkpoint folder (its µm/px from the checkpoint;
        older ones: :data:`DEFAULT_MPP`) and optionally an OCELOT checkpoint for the cancer
        area; ``engine`` runs both networks (:mod:`~histozoom.inference.engines`); ``compile``:
        ``torch.compile`` them."""
        from ..models.checkpoint import load_config, require_family, resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        _, meta = load_config(ckpt)
        require_family(ckpt, meta, "nuclei", "nuclei grading over slides needs a nuclei (CHR-Net) model; "
                                             "for cell detection use 'histozoom slide predict'")
        extra = meta.get("extra") or {}
        mpp = extra.get("mpp")
        nuclei = NucleiPredictor.from_checkpoint(ckpt, device=device, engine=engine, compile=compile)
        multiple = max(32, nuclei.multiple)
        settings = NucleiSlideSettings(float(mpp) if mpp else DEFAULT_MPP, tile or 512, 64 if margin is None else margin,
                                       multiple)
        tissue = None if tissue_checkpoint is None else load_tissue_model(tissue_checkpoint, device, engine, compile)
        sp = cls(nuclei, settings, str(ckpt), tissue, grading, "checkpoint" if mpp else "default")
        tissue_arg = None if tissue_checkpoint is None else str(tissue_checkpoint)
        sp.factory = functools.partial(cls.from_checkpoint, str(ckpt), tissue_arg, device, tile, margin, grading, engine,
                                       compile)
        return sp

    # ------------------------------------------------------------------ one slide
    def predict_slide(self, slide: str | Path | Slide, out_dir: str | Path, options: SlideOptions | None = None) -> dict:
        """Run one slide (a path, or an open :class:`~.reader.Slide`, which stays open) into
        ``out_dir``; returns its summary (also ``summary.json``)."""
        options = options or SlideOptions()
        owned = not isinstance(slide, Slide)
        with open_slide(slide, options.mpp) if owned else nullcontext(slide) as slide:
            return run_slide(self, slide, Path(out_dir), options, "nuclei")

    def prepare(self, slide: Slide, out_dir: Path, options: SlideOptions) -> Prepared:
        """Region, journal and (with a tissue model) the tissue pass; the batches still to do."""
        st = self.settings
        check_resolution(slide, st.mpp, options, "the nuclei model's view")
        if self.tissue is not None:
            check_resolution(slide, self.tissue.view.mpp, options, "the tissue model's view")
        region = find_region(slide, options, st.mpp, st.tile, st.margin)
        work = out_dir / ".work"
        plan = self._plan(slide, region, options)
        start_work(work, plan)
        clock = self.new_clock()
        tmap = None
        if self.tissue is not None and region.tiles:
            tclock = self.tissue.clock_factory()
            pad = 4 * self.tissue.view.mpp / slide.mpp
            tmap = stitch_tissue_map(self.tissue.probabilities, self.tissue.view, slide, region.grid, region.tiles, pad,
                                     work, options, tclock)
            clock.seconds += tclock.seconds
        return Prepared(slide_pass(self, slide, region, work, "", tmap, options), region, plan, tmap, clock)

    def finish(self, slide: Slide, prep: Prepared, out_dir: Path, options: SlideOptions, seconds: float) -> dict:
        """Seams, outputs and grades from the journal (:func:`.nuclei_outputs.finish_nuclei_slide`)."""
        from .nuclei_outputs import finish_nuclei_slide

        return finish_nuclei_slide(self, slide, prep.region, prep.job.work, out_dir, options, prep.tmap, prep.plan,
                                   prep.clock.seconds, seconds)

    def _plan(self, slide: Slide, region: Region, options: SlideOptions) -> dict:
        g = region.grid
        return {"slide": str(Path(slide.path).resolve()), "mpp": slide.mpp, "dimensions": list(slide.dimensions),
                "checkpoint": self.checkpoint, "tissue_checkpoint": None if self.tissue is None else self.tissue.checkpoint,
                "settings": self.settings.to_dict(), "watershed": asdict(self.nuclei.watershed), "tta": bool(self.nuclei.tta),
                "batch_size": options.batch_size, "roi": None if options.roi is None else str(options.roi),
                "grid": None if g is None else asdict(g), "tiles": len(region.tiles)}

    # ------------------------------------------------------------------ many slides (job.predict_slides)
    def run_key(self, slide: Path, options: SlideOptions) -> dict:
        """What makes a finished slide's outputs reusable."""
        return {"slide": str(slide.resolve()), "checkpoint": self.checkpoint,
                "tissue_checkpoint": None if self.tissue is None else self.tissue.checkpoint,
                "settings": self.settings.to_dict(), "grading": self.grading.to_dict(), "mpp": options.mpp,
                "roi": None if options.roi is None else str(options.roi), "formats": sorted(options.formats)}

    def table_row(self, summary: dict) -> dict:
        g = summary.get("grading") or {}
        shares = ((g.get("shares") or {}).get("cancer_area") or {})
        row = {"nuclei": summary.get("nuclei"), "tumour_nuclei_inside": shares.get("tumour_nuclei"),
               "slide_grade": (g.get("slide_grade") or {}).get("grade"), "tissue_area_mm2": summary.get("tissue_area_mm2")}
        for name, v in (shares.get("shares") or {}).items():
            row[name] = None if v is None else f"{v:.4f}"
        return row

    def describe(self, summary: dict) -> str:
        grade = ((summary.get("grading") or {}).get("slide_grade") or {}).get("grade")
        return (f"done, {summary['nuclei']} nuclei in {summary['seconds']:.1f} s"
                + ("" if grade is None else f", slide grade {grade}"))

    # ------------------------------------------------------------------ the nuclei pass (job.TilePass)
    def batch_reader(self) -> Callable[[Slide, SlidePass, TissueMap | None, list[int]], torch.Tensor]:
        """Reads a batch of tiles (:func:`read_nuclei_tiles`); picklable, no model."""
        return functools.partial(read_nuclei_tiles, self.settings)

    def new_clock(self) -> ModelClock:
        return ModelClock(self.nuclei.device)

    def forward_batch(self, imgs: torch.Tensor, job: SlidePass, clock: ModelClock) -> dict[str, torch.Tensor]:
        maps = clock(self.nuclei.batch_maps, to_device(imgs, self.nuclei.device))
        return {name: m.float().cpu() for name, m in maps.items()}

    def write_batch(self, path: Path, job: SlidePass, tmap: TissueMap | None, tiles: list[int],
                    maps: dict[str, torch.Tensor]) -> None:
        """Instances per tile (watershed, votes), those each tile owns, into the part ``path``."""
        from .nuclei_outputs import tile_nuclei, write_nuclei_part

        found = []
        for i, k in enumerate(tiles):
            tile_maps = {name: m[i].numpy() for name, m in maps.items()}
            found.append(tile_nuclei(self.nuclei.postprocess(tile_maps), job.grid, k))
        write_nuclei_part(path, found, tmap, self._tissue_ids())

    def _tissue_ids(self) -> np.ndarray:
        classes = None if self.tissue is None else self.tissue.classes
        return np.asarray(classes.ids if classes else (), np.int64)


def read_nuclei_tiles(settings: NucleiSlideSettings, slide: Slide, job: SlidePass, tmap: TissueMap | None,
                      tiles: list[int]) -> torch.Tensor:
    """The tiles ``(B, 3, tile, tile)`` at the model's µm/px (normalised, :func:`image_tensor`)."""
    st = settings
    return torch.stack([image_tensor(slide.read(*job.grid.read_origin(k), st.tile, st.tile, st.mpp)) for k in tiles])
