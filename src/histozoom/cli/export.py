"""``histozoom export``: a trained model as one ONNX graph (dynamic batch), for ONNX Runtime,
OpenVINO, TensorRT or any other runtime.

Examples::

    histozoom export --checkpoint runs/p2i2 --onnx p2i2.onnx                 # both branches + injection
    histozoom export --checkpoint runs/p2i2 --onnx tissue.onnx --entry tissue_probabilities
    histozoom export --checkpoint runs/chrnet --onnx chrnet.onnx --size 512

Cell–tissue models: inputs ``cell`` (B, 3, H, W) and ``tissue`` (B, 3, Ht, Wt) as
:func:`~histozoom.data.samples.image_tensor` makes them (RGB in [0, 1], the training
normalisation inside the model), ``windows`` (B, 4): the cell view's box in the tissue
view as fractions (x0, y0, w, h); ``tissue_mask`` (B, Ht, Wt) int64 for label-leaking
models; outputs ``cell_logits`` and ``tissue_logits``. Sides: the training views (or
``--size``). CHR-Net: input ``image``, outputs ``class_logits``, ``binary_logits``,
``distance``; side ``--size`` (default 512, the slide tile). The graph's metadata
(``histozoom.*``) holds the config, the checkpoint's extra record (classes, µm/px,
peaks) and the entry point. The graph is checked against PyTorch on random inputs.
"""

from __future__ import annotations

import argparse

from ._common import MAX_SIDE, positive_int, print_json

ENTRIES = ("forward", "tissue_probabilities", "cell_logits_given_tissue")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX (dynamic batch)", description=__doc__.splitlines()[0],
                       epilog="\n".join(__doc__.splitlines()[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="training run folder or save_pretrained folder")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--entry", choices=ENTRIES, default="forward",
                   help="which entry point (cell–tissue models; the others are the two halves slides use)")
    p.add_argument("--size", type=positive_int(MAX_SIDE), metavar="PX",
                   help="input side for every view (default: the training views; CHR-Net: 512)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import check_output
    from ..errors import InputError
    from ..inference.engines import export_inputs, save_onnx
    from ..models.checkpoint import checkpoint_family, from_pretrained, load_config, resolve_checkpoint

    check_output(args.onnx, "file")
    ckpt = resolve_checkpoint(args.checkpoint)
    _, meta = load_config(ckpt)
    family = checkpoint_family(meta)
    if family == "nuclei" and args.entry != "forward":
        raise InputError(ckpt, f"a nuclei model has only the forward entry point, not {args.entry!r}")
    model = from_pretrained(ckpt)
    try:
        inputs = export_inputs(model, family, meta.get("extra") or {}, args.entry, args.size)
    except ValueError as e:
        raise InputError(ckpt, str(e)) from e
    torch.manual_seed(0)
    from .. import __version__

    info = save_onnx(model, args.onnx, inputs, {"config": meta["config"], "config_type": meta["config_type"],
                                                "extra": meta.get("extra"), "entry": args.entry, "family": family,
                                                "version": __version__}, entry=args.entry)
    info["checkpoint"] = str(ckpt)
    if args.json:
        print_json(info)
    else:
        print(f"[export] wrote {info['path']} ({info['bytes'] / 2**20:.1f} MB; inputs {info['inputs']}; "
              f"outputs {info['outputs']}; max |Δp| vs PyTorch {info['max_abs_prob_difference']:.2e})")
    return 0
