import torch

from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet
from histozoom.training.losses import IGNORE, CellTissueLoss, label_lookup, soft_dice_loss, to_channels


def test_dice_perfect_and_wrong_predictions():
    target = torch.tensor([[[0, 1], [2, 1]]])
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target, eps=1e-6).item() < 1e-4
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(wrong, target, eps=1e-6).item() > 0.99


def test_dice_matches_hand_computation_and_ignores():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :] = IGNORE
    p = logits.softmax(1)
    valid = target != IGNORE
    dices = []
    for c in range(3):
        pc = p[:, c][valid]
        gc = (target[valid] == c).float()
        dices.append((2 * (pc * gc).sum() + 1) / (pc.sum() + gc.sum() + 1))
    expected = 1 - torch.stack(dices).mean()
    torch.testing.assert_close(soft_dice_loss(logits, target), expected)
    # changing logits at ignored pixels changes nothing
    logits2 = logits.clone()
    logits2[0, :, 0, :] = torch.randn(3, 5) * 10
    torch.testing.assert_close(soft_dice_loss(logits2, target), expected)


def test_label_lookup_non_contiguous_ids_and_ignore():
    classes = ClassSet(("a", "b"), (3, 7), ignore=255)
    t = label_lookup(classes, background=True)
    labels = torch.tensor([0, 3, 7, 255, 5])
    assert to_channels(labels, t).tolist() == [0, 1, 2, IGNORE, IGNORE]
    t = label_lookup(OCELOT_TISSUE_CLASSES, background=False)
    assert to_channels(torch.tensor([0, 1, 2, 255]), t).tolist() == [IGNORE, 0, 1, IGNORE]


def test_cell_tissue_loss_weights_and_ablation():
    out = {"cell_logits": torch.randn(2, 3, 8, 8, requires_grad=True), "tissue_logits": torch.randn(2, 2, 4, 4)}
    batch = {"cell_target": torch.randint(0, 3, (2, 8, 8)), "tissue_target": torch.randint(1, 3, (2, 4, 4)),
             "tissue_target_cell": torch.randint(1, 3, (2, 8, 8))}
    full, parts = CellTissueLoss(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)(out, batch)
    assert set(parts) == {"cell_dice_loss", "tissue_dice_loss"}
    assert abs(full.item() - sum(parts.values())) < 1e-5
    no_tissue, parts = CellTissueLoss(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, tissue_weight=0)(out, batch)
    assert set(parts) == {"cell_dice_loss"}
    cell_frame, parts = CellTissueLoss(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, tissue_in_cell_frame=True)(
        {**out, "tissue_logits": torch.randn(2, 2, 8, 8)}, batch)
    assert "tissue_dice_loss" in parts
    full.backward()
