"""Nuclei instance and class data for CHR-Net (issue 5): records, readers, targets, synthetic data.

* :mod:`.readers` — :class:`NucleiSample`, class schemes (:data:`CCRCC`), readers for
  CoNSeP-style ``.mat``, MICCAI 2015 text masks, GBM40 contour XML, instance-map files
  and a plain folder layout; writers for the folder layout and CoNSeP ``.mat``.
* :mod:`.targets` — binary, DIST distance, class and cross-category maps.
* :mod:`.synthetic` — a synthetic ccRCC grading generator following the ISUP nucleoli rule.
"""

from .readers import *  # noqa: F401,F403
from .readers import __all__ as _readers_all
from .targets import *  # noqa: F401,F403
from .targets import __all__ as _targets_all

__all__ = list(_readers_all) + list(_targets_all)
