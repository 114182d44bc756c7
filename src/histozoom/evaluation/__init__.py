"""Evaluation as the OCELOT 2023 challenge scored it, and the report's analyses.

This is the API behind ``histozoom evaluate``, in three steps:

* :mod:`.sources` -- where points come from. :func:`load_points` /
  :func:`load_ground_truth` read cell points from any source: a challenge JSON file, a
  folder of per-image CSVs (``x,y,class[,prob]``), a dataset folder (OCELOT release,
  Grand-Challenge container, own layout; ``image_K`` is the K-th sample of the split in
  sorted id order, :func:`split_ground_truth`), or Python objects (``{K: Points}``,
  ``{name: Points}``, ``[Points, ...]``, :class:`ChallengePoints`).
* :mod:`.scoring` -- :func:`evaluate` scores one or several prediction sets against one
  ground truth: per-image counts, pooled scores (exact and as the challenge rounded
  them), per-organ scores, tissue-region subgroups, tissue segmentation, and a paired
  bootstrap (CIs, ranking uncertainty, pairwise wins). :func:`score_split` scores a
  dataset split's predictions in memory (the trainer's validation and test scores).
* :mod:`.render` -- what a report writes: the result, :class:`EvaluationReport`,
  renders text tables, a JSON document and PNG plots.

:mod:`.oracles` scores synthetic data's oracles and writes a synthetic dataset's
``synthetic.json``. :mod:`.nuclei` is the nuclei side (``histozoom nuclei evaluate``):
Dice, AJI, PQ and aPQ of instance maps, read through the same ``.mat`` reader as training.

Images: the evaluated images are ``range(num_images)`` of the ground truth plus every
image that has ground-truth points. Predictions for an image outside that set are
counted as false positives (an image without ground truth) and reported in
``warnings``; ``strict=True`` rejects them, as the official scorer cannot score them.
"""

from ..data.challenge_json import ChallengePoints
from .oracles import oracle_mf1, synthetic_report, write_synthetic_dataset
from .render import report_document, report_tables, write_report
from .scoring import (
    EvaluationReport,
    MethodResult,
    bootstrap_report,
    compare_methods,
    evaluate,
    score_split,
)
from .sources import (
    PointSet,
    Source,
    load_ground_truth,
    load_points,
    read_mask_folder,
    split_ground_truth,
)

__all__ = [
    "ChallengePoints",
    "EvaluationReport",
    "MethodResult",
    "PointSet",
    "Source",
    "bootstrap_report",
    "compare_methods",
    "evaluate",
    "load_ground_truth",
    "load_points",
    "oracle_mf1",
    "read_mask_folder",
    "report_document",
    "report_tables",
    "score_split",
    "split_ground_truth",
    "synthetic_report",
    "write_report",
    "write_synthetic_dataset",
]
