"""Nuclei instance and class data for CHR-Net: records, readers, targets, synthetic data.

* :mod:`.records` — :class:`NucleiSample`, class schemes (:data:`CCRCC`), the instance-map
  validator, :func:`class_map` and its inverse :func:`instance_classes`.
* One module per source format: :mod:`.consep` (CoNSeP-style ``.mat``, read and write),
  :mod:`.miccai2015` (text masks), :mod:`.gbm40` (contour XML), :mod:`.folder` (the plain
  folder layout, its class file and instance-map files).
* :mod:`.dataset` — :class:`NucleiDataset` and :func:`open_nuclei` (tells the layout).
* :mod:`.targets` — binary, DIST distance and cross-category maps.
* :mod:`.synthetic` — a synthetic ccRCC grading generator following the ISUP nucleoli rule.
"""

from . import consep, dataset, folder, gbm40, miccai2015, records, targets
from .consep import *  # noqa: F403
from .dataset import *  # noqa: F403
from .folder import *  # noqa: F403
from .gbm40 import *  # noqa: F403
from .miccai2015 import *  # noqa: F403
from .records import *  # noqa: F403
from .targets import *  # noqa: F403

__all__ = [
    *records.__all__,
    *consep.__all__,
    *miccai2015.__all__,
    *gbm40.__all__,
    *folder.__all__,
    *dataset.__all__,
    *targets.__all__,
]
