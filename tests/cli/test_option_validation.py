"""Numeric options are checked when the command line is parsed: a bad value ends the
command with exit status 2 and one ``error: argument --OPTION: ...`` line, no traceback;
good values (the documented defaults and examples) still parse."""

from __future__ import annotations

import argparse

import pytest

from histozoom.cli import build_parser
from histozoom.cli._common import (
    MAX_BOOTSTRAP,
    bounded_int,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
    size_pair,
)

# the required options of each command, so that only the option under test can fail
BASE = {
    "train": ["train", "--out", "RUN"],
    "predict": ["predict", "--checkpoint", "RUN", "--data", "D", "--out", "P.json"],
    "evaluate": ["evaluate", "--pred", "P.json", "--gt", "G.json"],
    "experiment": ["experiment", "--data", "D", "--out", "EXP"],
    "synth": ["synth", "OUT"],
    "demo": ["demo"],
    "nuclei synth": ["nuclei", "synth", "OUT"],
    "nuclei train": ["nuclei", "train", "--out", "RUN"],
    "nuclei predict": ["nuclei", "predict", "--checkpoint", "RUN", "--input", "I", "--out", "O"],
    "nuclei evaluate": ["nuclei", "evaluate", "--pred", "P", "--gt", "G"],
}

NOT_FINITE = ["nan", "inf", "-inf"]
# (command, option, bad values, a good value)
CASES = [
    ("train", "--epochs", ["-5", "0", "1e9", "2.5", *NOT_FINITE], "20"),
    ("train", "--stop-after", ["0", "-1", "nan"], "3"),
    ("train", "--size", ["-5", "0", "1000000000", "nan"], "256"),
    ("train", "--batch-size", ["0", "-5", "1000000000", "inf"], "8"),
    ("train", "--lr", ["0", "-1e-4", "1e9", *NOT_FINITE], "1e-4"),
    ("train", "--cell-lr-ratio", ["0", "-1", "nan"], "0.5"),
    ("train", "--weight-decay", ["-1", "nan", "inf"], "0"),
    ("train", "--cell-dropout", ["-0.1", "1.5", "nan"], "0.3"),
    ("train", "--tissue-dropout", ["-0.1", "2", "inf"], "0.1"),
    ("train", "--cell-weight", ["-1", "nan"], "0"),
    ("train", "--tissue-weight", ["-1", "inf"], "1"),
    ("train", "--bn-recalibration", ["-1", "nan"], "0"),
    ("train", "--seed", ["-5", "1e9", "99999999999", "nan"], "0"),
    ("train", "--num-workers", ["-5", "1e9", "100000"], "0"),
    ("train", "--max-train-batches", ["0", "-5", "nan"], "2"),
    ("predict", "--size", ["-5", "0", "1000000000", "nan"], "native"),
    ("predict", "--offset", ["nan", "inf", "-0.5", "1.5"], "0.4"),
    ("predict", "--cell-mpp", ["0", "-5", "nan", "inf", "1e9"], "0.25"),
    ("predict", "--tissue-mpp", ["0", "-5", "nan", "inf", "1e9"], "1.0"),
    ("predict", "--threshold", ["-5", "1.5", "nan"], "0.5"),
    ("predict", "--min-distance-um", ["0", "-5", "nan", "inf", "1e9"], "2"),
    ("predict", "--batch-size", ["0", "-5", "1000000000"], "4"),
    ("predict", "--num-workers", ["-5", "1000000000"], "0"),
    ("evaluate", "--bootstrap", ["-5", "1e9", "1000000001", "2000000", *NOT_FINITE], "0"),
    ("evaluate", "--seed", ["-5", "nan"], "7"),
    ("evaluate", "--radius-um", ["0", "-5", "1e9", *NOT_FINITE], "3"),
    ("evaluate", "--mpp", ["0", "-5", "1e9", *NOT_FINITE], "0.2"),
    ("evaluate", "--image-size", ["-5", "0", "0x5", "1000000000", "nan", "inf"], "1024x768"),
    ("experiment", "--seeds", ["0", "-5", "1e9", "1000000", "nan"], "3"),
    ("experiment", "--epochs", ["0", "-5", "1e9"], "20"),
    ("experiment", "--size", ["0", "-5", "1000000000"], "256"),
    ("experiment", "--batch-size", ["0", "-5", "1000000000"], "8"),
    ("experiment", "--lr", ["0", "-1", *NOT_FINITE], "1e-3"),
    ("experiment", "--lr-grid", ["0", "-1", "nan"], "1e-3"),
    ("experiment", "--cell-dropout-grid", ["-0.1", "1.1", "nan"], "0.1"),
    ("experiment", "--cell-lr-ratios", ["0", "nan"], "0.5"),
    ("experiment", "--cell-lr-ratio", ["0", "inf"], "1"),
    ("experiment", "--cell-dropout", ["1.5", "nan"], "0.3"),
    ("experiment", "--tissue-dropout", ["-1", "nan"], "0.1"),
    ("experiment", "--grid-seeds", ["0", "-1"], "1"),
    ("experiment", "--search-budget", ["0", "-1", "1e9"], "27"),
    ("experiment", "--search-eta", ["1", "0", "-5", "1e9"], "3"),
    ("experiment", "--search-seed", ["-1", "nan"], "0"),
    ("experiment", "--num-workers", ["-1", "1000000000"], "8"),
    ("synth", "--n-train", ["-5", "1e9", "1000000000", "100001", "nan"], "40"),
    ("synth", "--n-val", ["-5", "1000000000"], "0"),
    ("synth", "--n-test", ["-5", "1000000000"], "0"),
    ("synth", "--cell-size", ["0", "-5", "1000000000", "nan"], "128"),
    ("synth", "--tissue-size", ["0", "-5", "1000000000"], "128"),
    ("synth", "--cell-mpp", ["0", "-5", "nan", "inf", "1e9"], "0.25"),
    ("synth", "--tissue-mpp", ["0", "-5", "nan", "inf", "1e9"], "1"),
    ("synth", "--seed", ["-5", "nan"], "3"),
    ("demo", "--epochs", ["-5", "1e9", "1000000000", "nan"], "0"),
    ("demo", "--bootstrap", ["-5", "1e9", "1000000001", "inf"], "0"),
    ("demo", "--seed", ["-5", "nan"], "1"),
    ("demo", "--threads", ["-5", "1000000000"], "0"),
    ("nuclei synth", "--n", ["0", "-5", "1e9", "1000000000", "nan"], "100"),
    ("nuclei synth", "--size", ["0", "-5", "1000000000", "nan"], "256"),
    ("nuclei synth", "--seed", ["-5", "nan"], "0"),
    ("nuclei train", "--epochs", ["0", "-5", "1e9"], "50"),
    ("nuclei train", "--stop-after", ["0", "-5"], "5"),
    ("nuclei train", "--crop", ["0", "-5", "1000000000", "nan"], "256"),
    ("nuclei train", "--batch-size", ["0", "-5", "1000000000"], "4"),
    ("nuclei train", "--lr", ["0", "-1", *NOT_FINITE], "1e-4"),
    ("nuclei train", "--weight-decay", ["-1", "nan"], "1e-5"),
    ("nuclei train", "--freeze-encoder-epochs", ["-1", "1e9"], "0"),
    ("nuclei train", "--bn-recalibration", ["-1"], "0"),
    ("nuclei train", "--seed", ["-1", "nan"], "0"),
    ("nuclei train", "--num-workers", ["-1"], "0"),
    ("nuclei train", "--max-train-batches", ["0", "-1"], "2"),
    ("nuclei evaluate", "--match-iou", ["0.4", "1", "nan", "inf"], "0.5"),
]


def _argv(command: str, option: str, value: str) -> list[str]:
    extra = [f"{option}={value}"]  # "=" so that "-5" is a value, not an option
    if command == "predict" and option == "--offset":
        extra = [option, value, "0.5"] if not value.startswith("-") else [option, "0.5", value]
    return [*BASE[command], *extra]


@pytest.mark.parametrize(("command", "option", "bad", "good"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_bad_numeric_values_exit_2_naming_the_option(capsys, command, option, bad, good):
    parser = build_parser()
    for value in bad:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(_argv(command, option, value))
        err = capsys.readouterr().err
        assert e.value.code == 2, (option, value)
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"histozoom {command}: error: argument {option}"), (value, err)
        assert "Traceback" not in err
    args = parser.parse_args(_argv(command, option, good))  # the good value still parses
    assert getattr(args, option.lstrip("-").replace("-", "_")) is not None


def test_every_numeric_option_is_validated():
    """No ``type=int``/``type=float`` is left in any command: each numeric option has bounds."""
    parser = build_parser()
    stack, unchecked = [parser], []
    while stack:
        p = stack.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                stack.extend(a.choices.values())
            elif a.type in (int, float):
                unchecked.append(f"{p.prog} {a.option_strings}")
    assert not unchecked


def test_defaults_are_unchanged():
    p = build_parser()
    ev = p.parse_args(BASE["evaluate"])
    assert (ev.bootstrap, ev.seed, ev.radius_um, ev.mpp, ev.image_size) == (10_000, 0, 3.0, None, None)
    ex = p.parse_args(BASE["experiment"])
    assert (ex.seeds, ex.epochs, ex.batch_size, ex.lr, ex.search_budget, ex.search_eta) == (5, 300, 8, None, 16, 3)
    assert ex.recipe == "default" and ex.lr_grid is None and ex.models[0] == "cell-only"  # grids: the recipe's
    sy = p.parse_args(BASE["synth"])
    assert (sy.n_train, sy.n_val, sy.n_test, sy.cell_size, sy.tissue_mpp, sy.preset) == (40, 10, 10, 1024, 0.8, "context")
    pr = p.parse_args(BASE["predict"])
    assert (tuple(pr.offset), pr.cell_mpp, pr.tissue_mpp, pr.batch_size, pr.size) == ((0.5, 0.5), 0.2, 0.8, 4, None)
    tr = p.parse_args(BASE["train"])
    assert tr.epochs is None and tr.size is None and tr.lr is None  # None = the config's value
    ns = p.parse_args(BASE["nuclei synth"])
    assert (ns.n, ns.size, ns.seed) == (100, 256, 0)
    assert p.parse_args(BASE["demo"]).bootstrap == 10_000
    assert p.parse_args([*BASE["evaluate"], "--bootstrap", str(MAX_BOOTSTRAP)]).bootstrap == MAX_BOOTSTRAP
    assert p.parse_args([*BASE["predict"], "--size", "native"]).size == "native"
    assert p.parse_args([*BASE["evaluate"], "--image-size", "512"]).image_size == (512, 512)


def test_the_type_functions():
    assert positive_int(10)("10") == 10 and positive_int()(" 7 ") == 7
    assert nonnegative_int(5)("0") == 0
    assert bounded_int(2, 4)("3") == 3
    assert positive_float(1)("1") == 1.0 and nonnegative_float()("0") == 0.0
    assert probability("0") == 0.0 and probability("1") == 1.0
    assert size_pair(100)("3x4") == (3, 4) and size_pair(100)("3,4") == (3, 4)
    for t, text in [(positive_int(10), "11"), (positive_int(), "0"), (positive_int(), "1.5"), (positive_int(), "x"),
                    (nonnegative_int(), "-1"), (bounded_int(2, 4), "1"), (positive_float(), "0"), (positive_float(), "nan"),
                    (positive_float(2), "2.1"), (nonnegative_float(), "-0.1"), (nonnegative_float(), "inf"),
                    (probability, "1.01"), (probability, "nan"), (size_pair(100), "101"), (size_pair(100), "1x2x3")]:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            t(text)
