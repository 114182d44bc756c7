"""Cheap copies of what the model registry says, for the parsers (choices, help texts).

The registry imports torch, and building the parser must not:
``histozoom --help``, ``histozoom train --help`` and argument errors stay instant. Each
value here is checked against the registry by ``tests/cli/test_cli_import_light.py``; when a
model is registered or a constant changes, that test names the entry to update.
"""

from __future__ import annotations

# histozoom.models.registry: list_models(family), describe_size_multiples(family)
MODEL_NAMES: dict[str, tuple[str, ...]] = {
    "cell-tissue": ("cell-only", "unet-cell-only", "tissue-label-leaking", "pred-to-input", "pred-to-inter-1",
                    "pred-to-inter-2", "pred-to-output", "feature-sharing", "pred-to-inter-2-no-large-fov",
                    "pred-to-inter-2-no-tissue-labels", "feature-sharing-no-large-fov", "feature-sharing-no-tissue-labels",
                    "mfovce-net"),
    "nuclei": ("chrnet", "chrnet-shr", "chrnet-mhr", "chrnet-mhr-udist", "chrnet-mhr-wdist", "unet-nuclei"),
}
SIZE_MULTIPLES_TEXT: dict[str, str] = {"cell-tissue": "16, or 32 for unet-cell-only", "nuclei": "32"}

# histozoom.inference.engines: ENGINES, CPU_DEFAULT
ENGINES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
CPU_DEFAULT_ENGINE = "openvino"
