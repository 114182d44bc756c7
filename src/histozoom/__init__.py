"""histozoom: cell detection with tissue context, challenge-exact evaluation, nuclei grading.

The core idea (see DESIGN.md): every sample is a pair of views of one place at two
magnifications plus the geometry between them (:class:`histozoom.geometry.Placement`).
"""

__version__ = "0.1.0"
