"""DistributedDataParallel: two CPU processes (gloo) train one step and stay in sync."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings

import numpy as np
import torch
import torch.multiprocessing as mp

from histozoom.data.synthetic import SynthConfig
from histozoom.evaluation import write_synthetic_dataset
from histozoom.training.distributed import SINGLE, DistInfo, EpochSampler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, run: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from histozoom.training.cell_tissue_trainer import Trainer
    from histozoom.training.config import TrainConfig
    from histozoom.training.distributed import cleanup, init_from_env

    info, device = init_from_env("cpu")
    cfg = TrainConfig(data=data, model="pred-to-inter-2", epochs=1, batch_size=2, lr=1e-3, cell_dropout=0.0,
                      tissue_dropout=0.0, model_overrides={"encoder_name": "tu-test_resnet", "decoder_channels": 16},
                      progress=False, tensorboard=False, test_split=None, device=device)
    trainer = Trainer(cfg, run, dist_info=info)
    seen = []
    original = trainer._train_epoch

    def spy(epoch):
        seen.extend(int(i) for _, i in trainer.sampler)
        return original(epoch)

    trainer._train_epoch = spy
    summary = trainer.fit()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"digest": digest, "seen": seen, "world": info.world_size, "summary_epochs": summary["epochs_done"]}, fh)
    cleanup(info)


def test_epoch_sampler_splits_and_carries_epoch():
    a = EpochSampler(7, DistInfo(0, 2), seed=3)
    b = EpochSampler(7, DistInfo(1, 2), seed=3)
    for s in (a, b):
        s.set_epoch(4)
    ka, kb = list(a), list(b)
    assert all(e == 4 for e, _ in ka + kb)
    assert sorted({i for _, i in ka} | {i for _, i in kb}) == list(range(7))
    one = EpochSampler(7, SINGLE, seed=3)
    one.set_epoch(4)
    assert list(one) == list(one) and sorted(i for _, i in one) == list(range(7))
    one.set_epoch(5)
    assert [i for _, i in one] != [i for _, i in ka]


def test_ddp_two_gloo_processes_train_one_step(tmp_path):
    data = tmp_path / "data"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        write_synthetic_dataset(data, SynthConfig(preset="simple", cell_size=64, tissue_size=64, n_train=4, n_val=2, n_test=0))
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path / "run"), str(out)), nprocs=2, join=True)
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]  # gradients were averaged: identical weights on both ranks
    assert sorted(r0["seen"] + r1["seen"]) == [0, 1, 2, 3]  # each rank trained on its half
    assert r0["summary_epochs"] == r1["summary_epochs"] == 1
    run = tmp_path / "run"
    assert (run / "best.ckpt" / "model.safetensors").is_file() and (run / "done.json").is_file()
    assert len((run / "log.csv").read_text().strip().splitlines()) == 2  # header + one epoch, written once
