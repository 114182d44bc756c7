"""CHR-Net (histozoom.models.chrnet): variants, wiring, global context, loss, targets, reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histozoom.data.nuclei.records import CCRCC
from histozoom.data.nuclei.targets import merge_classes
from histozoom.models.checkpoint import from_pretrained, save_pretrained
from histozoom.models.chrnet import (
    CCRCC_TASK_GROUPS,
    ChrNetConfig,
    ChrNetLoss,
    GlobalContextBlock,
    merge_task_targets,
    targets_for_config,
)
from histozoom.models.registry import build_model, get_config, list_models, model_family

TINY = dict(encoder_name="resnet18", decoder_channels=(16, 16, 8, 8, 8), lunet_channels=(4, 8),
            hrfe_channels=(8, 8, 16), hrfe_blocks=1, hrfe_stages=2)
NUCLEI = ["chrnet", "chrnet-shr", "chrnet-mhr", "chrnet-mhr-udist", "chrnet-mhr-wdist", "unet-nuclei"]
B, H, W = 2, 64, 96


def _image(h=H, w=W, seed=0):
    return torch.randn(B, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _targets(cfg: ChrNetConfig, h=H, w=W, seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, cfg.n_classes + 1, (B, h, w), generator=g)
    return {"binary": (classes > 0).long(), "distance": torch.rand(B, h, w, generator=g) * (classes > 0),
            "classes": classes, "tasks": targets_for_config(cfg, classes)}


def _tiny(name="chrnet", **overrides):
    return build_model(name, **{**TINY, **overrides})


# ---------------------------------------------------------------------- registry / config
def test_registry_lists_nuclei_family_apart():
    assert list_models("nuclei") == NUCLEI
    assert not set(NUCLEI) & set(list_models())  # default: the cell-tissue family, as before
    assert set(NUCLEI) <= set(list_models(None))
    assert model_family("chrnet") == "nuclei" and model_family("cell-only") == "cell-tissue"
    assert get_config("chrnet-mhr-wdist").replace(name="chrnet") == get_config("chrnet")
    assert get_config("chrnet", encoder_name="resnet18").encoder_name == "resnet18"
    with pytest.raises(ValueError, match="unknown ChrNetConfig fields"):
        get_config("chrnet", n_cell_classes=3)


def test_config_json_round_trip_and_scheme():
    cfg = get_config("chrnet-mhr-udist", **TINY)
    again = ChrNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.task_groups[0][0], tuple)
    assert ChrNetConfig.from_scheme(CCRCC).task_groups == CCRCC_TASK_GROUPS == ChrNetConfig().task_groups
    assert ChrNetConfig.from_scheme(CCRCC, merges=("task2", "task1")).task_groups == CCRCC_TASK_GROUPS[::-1]
    with pytest.raises(ValueError, match="unknown ChrNetConfig fields"):
        cfg.replace(hrfe_chanels=(8, 8, 8))


@pytest.mark.parametrize("changes, message", [
    (dict(task_groups=(((1, 2), (3,)), ((1,), (2, 3), (4,)))), "task 1 groups"),  # 4 missing
    (dict(task_groups=(((1, 2), (2, 3), (4,)), ((1,), (2, 3), (4,)))), "task 1 groups"),  # 2 twice
    (dict(task_groups=(((1, 2, 3, 4),),)), "needs 2 tasks"),
    (dict(n_classes=5), "task 1 groups"),
    (dict(task_aux_scales=(3, 1)), "task_aux_scales"),
    (dict(architecture="unet"), "architecture 'unet'"),
    (dict(segmentation="dist"), "segmentation"),
    (dict(hrfe_channels=(8, 8, 8, 8, 8)), "hrfe_channels"),
    (dict(decoder_channels=(16, 16)), "decoder_channels"),
])
def test_config_rejects_invalid(changes, message):
    with pytest.raises(ValueError, match=message):
        ChrNetConfig(**changes)


def test_single_task_ignores_task_groups():
    assert ChrNetConfig(classification="single", segmentation="none", n_classes=7).n_tasks == 1


# ---------------------------------------------------------------------- every variant
EXPECTED_KEYS = {
    "chrnet": {"class_logits", "task_logits", "binary_logits", "distance"},
    "chrnet-mhr-wdist": {"class_logits", "task_logits", "binary_logits", "distance"},
    "chrnet-mhr-udist": {"class_logits", "task_logits", "distance"},
    "chrnet-mhr": {"class_logits", "task_logits"},
    "chrnet-shr": {"class_logits", "task_logits"},
    "unet-nuclei": {"class_logits", "task_logits"},
}


@pytest.mark.parametrize("name", NUCLEI)
def test_variant_forward_backward_shapes(name):
    model = _tiny(name).train()
    cfg = model.config
    out = model(_image())
    assert set(out) == EXPECTED_KEYS[name]
    assert out["class_logits"].shape == (B, 5, H, W)
    n_tasks = 2 if cfg.classification == "two-task" and cfg.architecture == "chrnet" else 0
    assert [tuple(t.shape) for t in out["task_logits"]] == [(B, 4, H, W)] * n_tasks
    if "binary_logits" in out:
        assert out["binary_logits"].shape == (B, 1, H, W)
    if "distance" in out:
        d = out["distance"]
        assert d.shape == (B, 1, H, W) and float(d.detach().min()) >= 0 and float(d.detach().max()) <= 1
    total, parts = ChrNetLoss()(out, _targets(cfg))
    assert set(parts) == {"mcf"} | {f"mc{t + 1}" for t in range(n_tasks)} | (
        {"bc"} if "binary_logits" in out else set()) | ({"dist"} if "distance" in out else set())
    total.backward()
    g = model.encoder.body.conv1.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_bad_size_raises():
    model = _tiny("chrnet-shr")
    with pytest.raises(ValueError, match="48x64"):
        model(torch.zeros(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 4, 64, 64))


# ---------------------------------------------------------------------- wiring
def _capture_inputs(module, store, key):
    return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))


def test_auxiliary_inputs_are_100x_and_400x_views():
    model = _tiny("chrnet-mhr").eval()
    seen = {}
    for t, hrfe in enumerate(model.hrfe):
        _capture_inputs(hrfe.aux_stem, seen, t)
    x = _image()
    with torch.no_grad():
        model(x)
    assert seen[0].shape == (B, 3, H // 4, W // 4)  # task 1 (G1+G2 merged): the 100x view
    torch.testing.assert_close(seen[0], F.avg_pool2d(x, 4))
    assert seen[1].shape == (B, 3, H, W) and torch.equal(seen[1], x)  # task 2: the 400x image

    shr = _tiny("chrnet-shr").eval()
    _capture_inputs(shr.hrfe[0].aux_stem, seen, "shr")
    with torch.no_grad():
        shr(x)
    assert torch.equal(seen["shr"], x)


def test_composite_connections_carry_encoder_features():
    torch.manual_seed(0)
    model = _tiny("chrnet-mhr").eval()
    x = _image()
    with torch.no_grad():
        before = model(x)["task_logits"]
        for p in model.encoder.body.layer2.parameters():
            p.add_(0.5 * torch.randn_like(p))
        after = model(x)["task_logits"]
    for a, b in zip(before, after):
        assert not torch.allclose(a, b)
    # the encoder reaches a HRFE only through its composite connections
    with torch.no_grad():
        for conv in model.hrfe[0].composite:
            conv[0].weight.zero_()
        cut = model(x)["task_logits"][0]
        for p in model.encoder.body.layer1.parameters():
            p.add_(0.5 * torch.randn_like(p))
        torch.testing.assert_close(model(x)["task_logits"][0], cut)


def test_task1_loss_reaches_encoder_through_streams():
    model = _tiny("chrnet-mhr").train()
    cfg = model.config
    out = model(_image())
    F.cross_entropy(out["task_logits"][0], _targets(cfg)["tasks"][0]).backward()
    body = model.encoder.body
    for stage in ("layer1", "layer2", "layer3"):  # s4, s8, s16 feed the streams at 1/2, 1/4, 1/8
        grads = [p.grad for p in getattr(body, stage).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, stage
    assert all(p.grad is None or not p.grad.any() for p in body.layer4.parameters())  # s32 feeds no stream
    assert all(p.grad is None for p in model.hrfe[1].parameters())


def test_wnet_lunet_reads_sigmoid_of_binary_and_dist_loss_trains_binary_decoder():
    model = _tiny("chrnet").train()
    seen = {}
    _capture_inputs(model.lunet, seen, "lunet")
    out = model(_image())
    torch.testing.assert_close(seen["lunet"], torch.sigmoid(out["binary_logits"]))
    F.l1_loss(out["distance"][:, 0], _targets(model.config)["distance"]).backward()
    for part in (model.seg_head, model.seg_decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_udist_regresses_distance_from_the_decoder():
    model = _tiny("chrnet-mhr-udist").eval()
    seen = {}
    model.seg_head.register_forward_hook(lambda m, a, o: seen.__setitem__("head", o))
    with torch.no_grad():
        out = model(_image())
    assert model.lunet is None
    torch.testing.assert_close(out["distance"], torch.sigmoid(seen["head"]))


def test_head_fusion_starts_as_consistency_rule():
    model = _tiny("chrnet-mhr").eval()
    with torch.no_grad():
        out = model(_image())
    p1, p2 = (t.softmax(1) for t in out["task_logits"])
    # class k: task-1 channel of k's group + task-2 channel of k's group
    t1, t2 = [0, 1, 1, 2, 3], [0, 1, 2, 2, 3]
    expected = torch.stack([p1[:, t1[k]] + p2[:, t2[k]] for k in range(5)], dim=1)
    torch.testing.assert_close(out["class_logits"], expected)


# ---------------------------------------------------------------------- global context
def test_global_context_block_matches_formula():
    torch.manual_seed(0)
    gc = GlobalContextBlock(8, reduction=4)
    for p in gc.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 8, 5, 7)
    wk, bk = gc.conv_mask.weight.view(1, 8), gc.conv_mask.bias
    c1, ln, _, c2 = gc.transform
    flat = x.view(2, 8, 35)
    attn = torch.softmax(torch.einsum("oc,bcp->bop", wk, flat) + bk.view(1, 1, 1), dim=-1)  # (B, 1, HW)
    context = (flat * attn).sum(-1)  # (B, C)
    hidden = context @ c1.weight.view(2, 8).T + c1.bias
    mu, var = hidden.mean(-1, keepdim=True), hidden.var(-1, unbiased=False, keepdim=True)
    hidden = torch.relu((hidden - mu) / torch.sqrt(var + ln.eps) * ln.weight.view(2) + ln.bias.view(2))
    delta = hidden @ c2.weight.view(8, 2).T + c2.bias
    torch.testing.assert_close(gc(x), x + delta.view(2, 8, 1, 1))


def test_encoder_has_one_identity_gc_block_per_stage():
    model = _tiny("chrnet-shr").eval()
    assert [blk.conv_mask.in_channels for blk in model.encoder.gc] == [64, 128, 256, 512]
    x = _image()
    with torch.no_grad():
        with_gc = model.encoder(x)
        plain = model.encoder.body(x)  # zero-initialised GC: same features at start
    for a, b in zip(with_gc, plain):
        torch.testing.assert_close(a, b)
    assert _tiny("unet-nuclei").encoder.gc is None


# ---------------------------------------------------------------------- loss and targets
def _fake_outputs(g):
    return {
        "class_logits": torch.randn(B, 5, 8, 8, generator=g, requires_grad=True),
        "task_logits": [torch.randn(B, 4, 8, 8, generator=g) for _ in range(2)],
        "binary_logits": torch.randn(B, 1, 8, 8, generator=g),
        "distance": torch.rand(B, 1, 8, 8, generator=g),
    }


def test_loss_terms_equal_torch_functionals_and_weights_apply():
    g = torch.Generator().manual_seed(3)
    out, tgt = _fake_outputs(g), _targets(ChrNetConfig(), 8, 8)
    tgt["classes"][0, 0, :3] = -100  # ignored pixels
    tgt["tasks"] = targets_for_config(ChrNetConfig(), tgt["classes"])
    expected = {
        "bc": F.binary_cross_entropy_with_logits(out["binary_logits"][:, 0], tgt["binary"].float()),
        "dist": F.l1_loss(out["distance"][:, 0], tgt["distance"]),
        "mc1": F.cross_entropy(out["task_logits"][0], tgt["tasks"][0]),
        "mc2": F.cross_entropy(out["task_logits"][1], tgt["tasks"][1]),
        "mcf": F.cross_entropy(out["class_logits"], tgt["classes"]),
    }
    total, parts = ChrNetLoss()(out, tgt)
    assert parts.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(parts[k], expected[k].detach())
    default = {"bc": 1, "dist": 2, "mc1": 1, "mc2": 1, "mcf": 1}
    torch.testing.assert_close(total, sum(default[k] * expected[k] for k in expected))
    total, _ = ChrNetLoss({"dist": 0.5, "mcf": 3.0})(out, tgt)
    torch.testing.assert_close(total, sum({**default, "dist": 0.5, "mcf": 3.0}[k] * expected[k] for k in expected))
    total, _ = ChrNetLoss((0, 0, 0, 0, 1))(out, tgt)
    torch.testing.assert_close(total, expected["mcf"])
    total.backward()
    assert out["class_logits"].grad is not None
    with pytest.raises(ValueError, match="unknown loss terms"):
        ChrNetLoss({"l_dist": 1.0})


def test_loss_skips_absent_terms():
    g = torch.Generator().manual_seed(4)
    out = _fake_outputs(g)
    tgt = {"classes": torch.randint(0, 5, (B, 8, 8), generator=g)}
    total, parts = ChrNetLoss()({"class_logits": out["class_logits"], "task_logits": []}, tgt)
    assert set(parts) == {"mcf"}
    torch.testing.assert_close(total, F.cross_entropy(out["class_logits"], tgt["classes"]))


def test_task_targets_match_merge_classes_for_ccrcc():
    cfg = ChrNetConfig.from_scheme(CCRCC)
    classes = torch.randint(0, 5, (3, 16, 16), generator=torch.Generator().manual_seed(5))
    classes[0, 0, 0] = 255
    got = targets_for_config(cfg, classes)
    assert len(got) == len(CCRCC.merges) == 2
    for merged, merge in zip(got, CCRCC.merges):
        want = merge_classes(classes.numpy(), merge.mapping, keep=(0, 255))
        assert merged.dtype == torch.int64
        np.testing.assert_array_equal(merged.numpy(), want)
    assert targets_for_config(cfg.replace(classification="single"), classes) == []
    assert merge_task_targets(torch.tensor([-100, 0, 2]), cfg.task_groups, 4)[1].tolist() == [-100, 0, 2]


# ---------------------------------------------------------------------- checkpoint / training
def test_checkpoint_round_trip(tmp_path):
    model = _tiny("chrnet", encoder_dropout=0.1, head_dropout=0.2).train()
    with torch.no_grad():
        model(_image(seed=7))  # move BN running stats off their init
    model.eval()
    save_pretrained(model, tmp_path / "ckpt", extra={"epoch": 1})
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["config_type"] == "histozoom.models.chrnet.ChrNetConfig" and meta["model_name"] == "chrnet"
    again = from_pretrained(tmp_path / "ckpt")
    assert again.config == model.config and not again.training
    x = _image(seed=8)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert a.keys() == b.keys()
    for k in a:
        for u, v in zip(a[k] if k == "task_logits" else [a[k]], b[k] if k == "task_logits" else [b[k]]):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_tiny_overfit():
    """Ten Adam steps on two 32×32 images of coloured squares: every loss term goes down."""
    torch.manual_seed(0)
    model = _tiny("chrnet").train()
    classes = torch.zeros(B, 32, 32, dtype=torch.long)
    for k, (r, c) in enumerate([(2, 2), (2, 18), (18, 2), (18, 18)], start=1):
        classes[0, r:r + 10, c:c + 10] = k
        classes[1, r + 2:r + 12, c:c + 10] = 5 - k
    x = classes[:, None].float().expand(B, 3, 32, 32) / 4 + 0.1 * _image(32, 32, seed=9)
    tgt = {"binary": (classes > 0).long(), "distance": 0.5 * (classes > 0).float(), "classes": classes,
           "tasks": targets_for_config(model.config, classes)}
    loss_fn = ChrNetLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(10):
        opt.zero_grad()
        total, parts = loss_fn(model(x), tgt)
        total.backward()
        opt.step()
        history.append({"total": float(total.detach()), **{k: float(v) for k, v in parts.items()}})
    assert history[-1]["total"] < 0.7 * history[0]["total"]
    assert all(history[-1][k] < history[0][k] for k in history[0])
