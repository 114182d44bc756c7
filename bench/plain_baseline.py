"""A plain reference training, outside histozoom's trainer, for the recipe table.

What issue 11 compared the trainer against: one segmentation-models-pytorch DeepLabV3+
ResNet-34 per branch, Adam at a constant 1e-3, Dice + cross-entropy, random flips, the
best validation epoch. Cell-only only (the cell view alone). It reuses histozoom's
dataset reader, disk targets, peak decoding and challenge scoring, so the only
difference from ``histozoom train --model cell-only`` is the optimisation set-up.

    .venv/bin/python bench/plain_baseline.py --data DATA --epochs 25 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def main() -> None:
    import segmentation_models_pytorch as smp

    from histozoom.data.open import open_dataset
    from histozoom.data.samples import PairDataset, SampleConfig
    from histozoom.evaluation.scoring import score_split
    from histozoom.inference.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    ds = open_dataset(a.data)
    train = PairDataset(ds.split("train"), SampleConfig(size=a.size))
    loader = torch.utils.data.DataLoader(train, batch_size=a.batch_size, shuffle=True, drop_last=True)
    net = smp.DeepLabV3Plus(encoder_name="resnet34", encoder_weights=None, classes=1 + len(ds.spec.cell_classes))

    class CellOnly(torch.nn.Module):  # the predictor's forward signature
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, cell, tissue=None, windows=None, mask=None):
            return {"cell_logits": self.net(cell)}

    model = CellOnly()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    predictor = Predictor(model, ds.spec, size=a.size)
    best, best_state, t0 = -1.0, None, time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        for batch in loader:
            x, y = batch["cell_image"], batch["cell_target"]
            flip = torch.rand(2) < 0.5
            dims = [d for d, f in zip((-1, -2), flip) if f]
            if dims:
                x, y = x.flip(dims), y.flip(dims)
            logits = model(x)["cell_logits"]
            prob = logits.softmax(1)
            onehot = F.one_hot(y, prob.shape[1]).permute(0, 3, 1, 2).float()
            inter, union = (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))
            loss = F.cross_entropy(logits, y) + (1 - (2 * inter + 1) / (union + 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = score_split(predictor.predict_split(ds.split("val")), ds.split("val"))["mF1"]
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} val mF1 {val:.4f}", flush=True)
    model.load_state_dict(best_state)
    test = score_split(predictor.predict_split(ds.split("test")), ds.split("test"))["mF1"]
    print(json.dumps({"test_mF1": test, "best_val": best, "train_s": time.perf_counter() - t0, "seed": a.seed}))


if __name__ == "__main__":
    main()
