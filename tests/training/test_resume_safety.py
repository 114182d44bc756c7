"""No file histozoom reads is unpickled: a crafted pickle in any run-folder, checkpoint or
data file is an InputError naming the file and never runs; the resume state round-trips
exactly without pickle."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shlex
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_synthetic
from histozoom.cli import main
from histozoom.data.io import read_npy
from histozoom.errors import InputError
from histozoom.models.checkpoint import from_pretrained, resolve_checkpoint
from histozoom.training.cell_tissue_trainer import train
from histozoom.training.config import TrainConfig
from histozoom.training.loop import read_done, rng_state, set_rng_state
from histozoom.training.resume_state import load_legacy_state, load_state, save_state

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, on the payloads


# ---------------------------------------------------------------------- payloads
class _RunsShell:
    """Unpickling this runs ``touch MARKER`` in a shell."""

    def __init__(self, marker: Path):
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _OpensFile:
    """Unpickling this creates MARKER through a builtin (no shell)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payloads(marker: Path) -> dict[str, bytes]:
    """Malicious files: bare pickles and torch.save archives (the object alone and inside a
    dict shaped like a resume state)."""
    out = {}
    for cls in (_RunsShell, _OpensFile):
        obj = cls(marker)
        out[f"{cls.__name__}-pickle"] = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        out[f"{cls.__name__}-pickle2"] = pickle.dumps({"epoch": 1, "optimizer": obj}, protocol=2)
        buf = io.BytesIO()
        torch.save({"epoch": 1, "optimizer": obj, "rng": {"torch": torch.get_rng_state()}}, buf)
        out[f"{cls.__name__}-torch"] = buf.getvalue()
    return out


def test_payloads_are_live(tmp_path):
    """The payloads do run when unpickled unsafely (so the tests below mean something)."""
    for name, data in _payloads(tmp_path / "m").items():
        marker = tmp_path / "m"
        if name.endswith("torch"):
            (tmp_path / "x.pt").write_bytes(data)
            got = torch.load(tmp_path / "x.pt", weights_only=False)
        else:
            got = pickle.loads(data)
        for v in (got, *(got.values() if isinstance(got, dict) else ())):
            if hasattr(v, "close"):
                v.close()
        assert marker.exists(), name
        marker.unlink()


# ---------------------------------------------------------------------- a run to tamper with
def _cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), model="pred-to-inter-2", model_overrides=dict(TINY), cell_dropout=0.0,
                tissue_dropout=0.0, epochs=2, batch_size=2, lr=1e-3, progress=False, tensorboard=False,
                test_split=None, size=32)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """``(config, run)``: a 2-epoch run stopped after epoch 1 (last/ and best.ckpt/ written)."""
    root = tmp_path_factory.mktemp("resume_safety")
    data = write_tiny_synthetic(root / "data", cell_mpp=0.4, tissue_mpp=1.6, seed=3)
    cfg = _cfg(data)
    train(cfg.replace(stop_after=1), root / "run")
    return cfg, root / "run"


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_last_folder_holds_no_pickle(stopped_run):
    _, run = stopped_run
    assert sorted(p.name for p in (run / "last").iterdir()) == ["config.json", "model.safetensors", "state.json",
                                                                 "state.safetensors"]
    doc = json.loads((run / "last" / "state.json").read_text())
    assert doc["format"] == "histozoom-resume/1" and doc["state"]["epoch"] == 1


RESUME_FILES = ["train_config.json", "last/state.json", "last/state.safetensors", "last/model.safetensors",
                "last/state.pt"]
"""Every file a resume reads (``last/state.pt``: where an older histozoom kept the state)."""


@pytest.mark.parametrize("target", RESUME_FILES)
def test_malicious_resume_file_is_refused_and_never_runs(stopped_run, tmp_path, target):
    cfg, run = stopped_run
    marker = tmp_path / "pwned"
    for name, data in _payloads(marker).items():
        r = _copy(run, tmp_path / f"run-{name}")
        if target == "last/state.pt":  # an old-format folder: the pickle is the only state
            (r / "last" / "state.json").unlink()
            (r / "last" / "state.safetensors").unlink()
        (r / target).write_bytes(data)
        with pytest.raises(InputError) as err:
            train(cfg, r, resume=True)
        assert err.value.path == str(r / target), (name, str(err.value))
        if target == "last/state.pt":
            assert "older histozoom" in str(err.value) and "cannot be resumed safely" in str(err.value)
        assert not marker.exists(), f"{name} in {target} ran"
        assert not (r / "done.json").exists()


CHECKPOINT_FILES = ["best.ckpt/config.json", "best.ckpt/model.safetensors", "last/config.json", "last/model.safetensors"]


@pytest.mark.parametrize("target", CHECKPOINT_FILES)
def test_malicious_checkpoint_file_is_refused_and_never_runs(stopped_run, tmp_path, target):
    """What predict / evaluate / a trainer's test read: the checkpoint folders."""
    _, run = stopped_run
    marker = tmp_path / "pwned"
    for name, data in _payloads(marker).items():
        r = _copy(run, tmp_path / f"run-{name}")
        (r / target).write_bytes(data)
        folder = resolve_checkpoint(r) if target.startswith("best") else r / "last"
        with pytest.raises(InputError) as err:
            from_pretrained(folder)
        assert err.value.path == str(r / target), (name, str(err.value))
        assert not marker.exists(), f"{name} in {target} ran"


def test_malicious_done_json_counts_as_unfinished(tmp_path):
    marker = tmp_path / "pwned"
    for data in _payloads(marker).values():
        (tmp_path / "done.json").write_bytes(data)
        assert read_done(tmp_path) is None
    assert not marker.exists()


def test_malicious_encoder_weights_and_data_files_are_refused(tmp_path):
    from histozoom.data.nuclei.consep import read_consep_labels
    from histozoom.data.own_layout import OwnDataset
    from histozoom.models.branch import load_encoder_weights

    marker = tmp_path / "pwned"
    for i, data in enumerate(_payloads(marker).values()):
        for suffix in (".pt", ".pth", ".bin", ".safetensors"):
            path = tmp_path / f"w{i}{suffix}"
            path.write_bytes(data)
            with pytest.raises(InputError, match=path.name):
                load_encoder_weights(torch.nn.Linear(1, 1), path)
        for suffix, read in ((".npy", read_npy), (".mat", read_consep_labels)):
            path = tmp_path / f"d{i}{suffix}"
            path.write_bytes(data)
            with pytest.raises(InputError, match=path.name):
                read(path)
        (tmp_path / f"ds{i}").mkdir()
        (tmp_path / f"ds{i}" / "dataset.yaml").write_bytes(data)
        with pytest.raises(InputError, match="dataset.yaml"):
            OwnDataset(tmp_path / f"ds{i}")
    # YAML's own way to call Python is refused too (safe_load)
    (tmp_path / "dsy").mkdir()
    (tmp_path / "dsy" / "dataset.yaml").write_text(f"!!python/object/apply:os.system [{shlex.quote('touch ' + str(marker))}]\n")
    with pytest.raises(InputError, match="dataset.yaml"):
        OwnDataset(tmp_path / "dsy")
    assert not marker.exists()


def test_object_npy_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "labels.npy"
    np.save(path, np.array([_OpensFile(marker), None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"labels\.npy.*Object arrays"):
        read_npy(path)
    np.savez(tmp_path / "two.npz", a=np.zeros(2))
    shutil.move(tmp_path / "two.npz", tmp_path / "two.npy")
    with pytest.raises(InputError, match=r"two\.npy.*not a \.npy array"):
        read_npy(tmp_path / "two.npy")
    assert not marker.exists()


# ---------------------------------------------------------------------- damaged resume files
@pytest.mark.parametrize("target", ["last/state.json", "last/state.safetensors", "last/model.safetensors"])
def test_truncated_or_missing_resume_file_is_a_named_error(stopped_run, tmp_path, target):
    cfg, run = stopped_run
    for how in ("half", "empty", "missing"):
        r = _copy(run, tmp_path / how)
        data = (r / target).read_bytes()
        if how == "missing":
            (r / target).unlink()
        else:
            (r / target).write_bytes(data[: len(data) // 2] if how == "half" else b"")
        with pytest.raises(InputError) as err:
            train(cfg, r, resume=True)
        assert err.value.path == str(r / target), (how, str(err.value))


def test_tampered_state_json_is_a_named_error(stopped_run, tmp_path):
    cfg, run = stopped_run
    doc = json.loads((run / "last" / "state.json").read_text())
    bad = {
        "unknown tag": {"$": "pickle", "data": "gASV"},
        "object dtype": {"$": "numpy", "dtype": "object", "value": 1},
        "missing tensor": {"$": "tensor", "key": "t999"},
        "not a list": {"$": "tuple", "items": 3},
    }
    for what, value in bad.items():
        r = _copy(run, tmp_path / what.replace(" ", "_"))
        state = dict(doc["state"], epoch=value)
        (r / "last" / "state.json").write_text(json.dumps({**doc, "state": state}))
        with pytest.raises(InputError, match=r"state\.json.*malformed"):
            train(cfg, r, resume=True)
    # well-formed but not this run's: a wrong optimizer state
    r = _copy(run, tmp_path / "misfit")
    optimizer = dict(doc["state"]["optimizer"])
    optimizer["param_groups"] = optimizer["param_groups"][:1]  # the run has two groups (cell, tissue)
    (r / "last" / "state.json").write_text(json.dumps({**doc, "state": dict(doc["state"], optimizer=optimizer)}))
    with pytest.raises(InputError, match=r"state\.json.*does not fit"):
        train(cfg, r, resume=True)
    for fmt in ({**doc, "format": "other/1"}, [1, 2]):
        (r / "last" / "state.json").write_text(json.dumps(fmt))
        with pytest.raises(InputError, match=r"state\.json.*not a histozoom resume state"):
            train(cfg, r, resume=True)


def test_cli_resume_of_a_damaged_run_exits_2(stopped_run, tmp_path, capsys):
    _, run = stopped_run
    r = _copy(run, tmp_path / "r")
    (r / "last" / "state.safetensors").write_bytes(b"\x00" * 10)
    rc = main(["train", "--out", str(r), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "state.safetensors" in err and "Traceback" not in err


# ---------------------------------------------------------------------- old runs
def _legacy_state(state: dict) -> dict:
    """``state`` with its RNG states as an older histozoom kept them (numpy's and python's tuples)."""
    rng = dict(state["rng"])
    n = rng["numpy"]
    rng["numpy"] = (n["bit_generator"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    rng["python"] = (rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"])
    return {**state, "rng": rng}


def test_old_state_pt_is_refused_unless_weights_only_loads_it(stopped_run, tmp_path):
    cfg, run = stopped_run
    state = load_state(run / "last")
    # what an older histozoom wrote: numpy's RNG state needs numpy globals -> refused, not unpickled
    old = _copy(run, tmp_path / "old")
    for f in ("state.json", "state.safetensors"):
        (old / "last" / f).unlink()
    torch.save(_legacy_state(state), old / "last" / "state.pt")
    with pytest.raises(InputError, match=r"last/state\.pt.*older histozoom.*cannot be resumed safely"):
        train(cfg, old, resume=True)
    with pytest.raises(InputError, match="cannot be resumed safely"):
        load_legacy_state(old / "last" / "state.pt")
    # a state.pt that torch's restricted unpickler accepts resumes, like the new format
    ok = _copy(old, tmp_path / "ok")
    torch.save(state, ok / "last" / "state.pt")
    new = _copy(run, tmp_path / "new")
    assert train(cfg, ok, resume=True)["epochs_done"] == 2
    assert train(cfg, new, resume=True)["epochs_done"] == 2
    assert (ok / "last" / "model.safetensors").read_bytes() == (new / "last" / "model.safetensors").read_bytes()
    assert (ok / "last" / "state.json").is_file() and not (ok / "last" / "state.pt").exists()


# ---------------------------------------------------------------------- exact round trip
class _Augment:
    def __init__(self):
        self.rng = np.random.default_rng([5, 6, 7])


def _draws(augment) -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(),  # noqa: NPY002
            random.random(), random.gauss(0, 1), augment.rng.random(3).tolist()]


def test_resume_state_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    groups = [{"params": list(model[0].parameters()), "lr": 1e-3, "name": "a", "weight_decay": 1e-4},
              {"params": list(model[1:].parameters()), "lr": 5e-4, "name": "b", "weight_decay": 0.0}]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 3], 0.3)
    x = torch.randn(8, 4)

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        sched.step()

    for _ in range(3):
        step()
    augment = _Augment()
    augment.rng.random(5)
    np.random.randn()  # noqa: NPY002 - leaves a cached gaussian in numpy's legacy state
    random.gauss(0, 1)  # and in python's
    state = {"epoch": 3, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(augment),
             "best": {"epoch": 2, "score": float("-inf")}, "history": [{"epoch": 1, "lr_a": 1e-3, "val": {
                 "mF1": np.float64(0.25), "f1": {"BC": np.float32(0.1), "TC": float("nan")}, "counts": [1, 2]}}],
             "odd": {"$": (1, 2), 7: Counter({3: 2}), "arr": np.arange(6, dtype=np.int16).reshape(2, 3)}}
    save_state(tmp_path, state)
    expected_draws = _draws(augment)
    back = load_state(tmp_path)

    # optimizer: every tensor bit for bit (dtype and shape too), every hyperparameter and its type
    a, b = state["optimizer"], back["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    assert [type(v) for g in a["param_groups"] for v in g.values()] == [type(v) for g in b["param_groups"] for v in g.values()]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for name, t in a["state"][k].items():
            u = b["state"][k][name]
            assert t.dtype == u.dtype and t.shape == u.shape and torch.equal(t, u), (k, name)
    # scheduler: equal, and the milestones stay a Counter
    assert back["scheduler"] == state["scheduler"] and isinstance(back["scheduler"]["milestones"], Counter)
    # bookkeeping, numpy scalars, tuples, int keys, NaN and -inf keep their values and types
    assert back["best"] == {"epoch": 2, "score": float("-inf")}
    val = back["history"][0]["val"]
    assert type(val["mF1"]) is np.float64 and val["mF1"] == 0.25
    assert type(val["f1"]["BC"]) is np.float32 and val["f1"]["BC"] == np.float32(0.1) and np.isnan(val["f1"]["TC"])
    assert back["odd"]["$"] == (1, 2) and back["odd"][7] == Counter({3: 2})
    assert back["odd"]["arr"].dtype == np.int16 and np.array_equal(back["odd"]["arr"], state["odd"]["arr"])

    # RNG: restoring the loaded state repeats the same draws from torch, numpy, python and the augmentation
    augment2 = _Augment()
    set_rng_state(back["rng"], augment2)
    assert _draws(augment2) == expected_draws

    # a fresh optimizer and scheduler loaded from the file continue exactly as the original
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam([{"params": list(model2[0].parameters()), "lr": 1e-3, "name": "a", "weight_decay": 1e-4},
                             {"params": list(model2[1:].parameters()), "lr": 5e-4, "name": "b", "weight_decay": 0.0}])
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, [2, 3], 0.3)
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    for _ in range(2):
        step()
        opt2.zero_grad()
        model2(x).square().mean().backward()
        opt2.step()
        sched2.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_save_refuses_what_it_cannot_store_exactly(tmp_path):
    for bad in ({"x": object()}, {"p": Path("/x")}, {"a": np.array([None], dtype=object)}):
        with pytest.raises(TypeError, match="cannot store"):
            save_state(tmp_path, bad)
    assert not (tmp_path / "state.json").exists()
