"""Starting or joining Ray, for the slide runs (:mod:`histozoom.slides.ray_run`) and the
experiment runs (:mod:`histozoom.training.ray_runs`). Ray is an optional extra
(``pip install 'histozoom[ray]'``)."""

from __future__ import annotations

from .errors import InputError

__all__ = ["connect"]


def connect(address: str | None) -> None:
    """``None``/``"local"``: start a Ray on this machine, or use the one this process
    already started (``ray.init(num_cpus=…)`` beforehand sets its size); ``"auto"``: join
    the running cluster; else its address (``ray://host:10001`` or ``host:6379``)."""
    try:
        import ray
    except ImportError as e:
        raise InputError(None, "Ray is not installed: pip install 'histozoom[ray]'") from e
    if ray.is_initialized():
        return
    ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
