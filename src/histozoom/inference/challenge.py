"""The OCELOT 2023 Grand-Challenge algorithm container: its input folder in, its
``cell_classification.json`` out (``histozoom challenge run``).

The platform mounts the test pairs as a container input folder
(:mod:`histozoom.data.gc_container`: ``images/cell_patches/*.tif``,
``images/tissue_patches/*.tif``, ``metadata.json``) and reads one file from the output
folder: ``cell_classification.json``, a "Multiple points" document with one entry per
detection (``name`` = ``image_K`` for pair ``K``, ``point`` = ``[x, y, class]`` in cell-image
pixels, 1 = BC, 2 = TC, ``probability``). Before the file is renamed into place it is read
back with the official checker's strict rules (:func:`~histozoom.data.challenge_json.read_challenge_json`
with ``strict=True``), so a file the platform would reject is never left there.

Memory: the two stacks are decoded once (126 test pairs of 1024² RGB are 0.8 GB) and pairs
are sliced from them one batch at a time; the 12 GB limit of the challenge's containers is
far above what this needs (``bench/bench_challenge.py`` measures the peak).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

OUTPUT_NAME = "cell_classification.json"


def run_container(input_dir: str | Path, output_dir: str | Path, checkpoints: Sequence[str | Path], *,
                  device: str = "cpu", engine: str = "torch", tta: bool = False, fusion: str | None = None,
                  batch_size: int = 2, progress: bool = False) -> dict:
    """Detect the cells of every pair of the container input ``input_dir`` with the
    checkpoint(s) (several: their ensemble) and write ``output_dir/cell_classification.json``;
    returns a summary (pairs, detections per class, seconds, the output path)."""
    from ..atomic import check_output
    from ..data.challenge_json import read_challenge_json
    from ..data.gc_container import GrandChallengeContainer, is_container_dir
    from ..errors import InputError
    from ..pair import OCELOT_CELL_CLASSES
    from .predictor import Predictor

    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not is_container_dir(input_dir):
        raise InputError(input_dir, "not a Grand-Challenge input folder (images/cell_patches/*.tif and metadata.json)")
    out = check_output(output_dir / OUTPUT_NAME, "file")
    pred = Predictor.from_checkpoints(list(checkpoints), device=device, tta=tta, batch_size=batch_size,
                                      engine=engine, fusion=fusion)
    if tuple(pred.classes.ids) != tuple(OCELOT_CELL_CLASSES.ids):
        raise InputError(checkpoints[0], f"the challenge scores classes 1 (BC) and 2 (TC); this model predicts "
                                         f"{dict(zip(pred.classes.ids, pred.classes.names))}")
    split = GrandChallengeContainer(input_dir)
    result = pred.predict_split(split, progress=progress)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".{OUTPUT_NAME}.checking"
    result.write_challenge_json(tmp)
    try:
        read_challenge_json(tmp, strict=True)
    except InputError as e:  # a bug of ours: never hand the platform a file it rejects
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"the written detections fail the challenge's checker: {e}") from e
    tmp.replace(out)
    per_class = {n: 0 for n in pred.classes.names}
    for pts in result.points.values():
        for c in pts.cls.tolist():
            per_class[pred.classes.name(c)] += 1
    return {"pairs": len(result), "detections": sum(per_class.values()), "per_class": per_class,
            "checkpoints": [str(c) for c in checkpoints], "tta": tta, "fusion": fusion, "output": str(out),
            "seconds": round(time.perf_counter() - start, 3)}
