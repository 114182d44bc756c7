"""The OCELOT model family: shapes, alignment at every injection point, gradients, dropout,
local encoder weights. Tiny inputs (64 px), one CPU thread."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

from histozoom.errors import InputError
from histozoom.geometry import Placement, cell_to_tissue, tissue_to_cell
from histozoom.models.branch import POSITIONS, DeepLabBranch
from histozoom.models.cell_tissue import (
    SHARE_MODES,
    CellTissueConfig,
    all_sharing_configs,
    tissue_index,
    tissue_one_hot,
)
from histozoom.models.registry import (
    PRED_TO_POSITIONS,
    build_model,
    describe_size_multiples,
    get_config,
    list_models,
    model_family,
    size_multiples,
)

B = 2
# Different window per sample; the second one sticks out of the tissue image (zero fill).
WINDOWS = torch.tensor([[0.375, 0.375, 0.25, 0.25], [0.70, -0.05, 0.40, 0.30]])
FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(B, 4)
SMALL = dict(encoder_name="resnet18", decoder_channels=16)  # fast settings
TINY = dict(encoder_name="tu-test_resnet", decoder_channels=16)  # timm's tiny test ResNet


def make_inputs(cell_hw=(64, 64), tissue_hw=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    cell = torch.randn(B, 3, *cell_hw, generator=g)
    tissue = torch.randn(B, 3, *tissue_hw, generator=g)
    mask = torch.randint(0, 3, (B, *tissue_hw), generator=g)
    mask[:, : tissue_hw[0] // 2, : tissue_hw[1] // 3] = 255
    return cell, tissue, mask


# Module whose input is the map after concatenation at each boundary.
NEXT_MODULE = {"input": "encoder", "encoder": "aspp", "aspp": "decoder", "decoder": "head"}


def capture_inputs(branch: nn.Module, positions=POSITIONS) -> dict[str, torch.Tensor]:
    """Pre-hooks that store the first input of the module after each boundary."""
    store: dict[str, torch.Tensor] = {}
    for pos in positions:
        def hook(_m, args, pos=pos):
            store[pos] = args[0]
        getattr(branch, NEXT_MODULE[pos]).register_forward_pre_hook(hook)
    return store


# ---------------------------------------------------------------------- registry / config
def test_registry_has_paper_variants():
    names = list_models()
    for n in ["cell-only", "unet-cell-only", "tissue-label-leaking", *PRED_TO_POSITIONS, "feature-sharing",
              "pred-to-inter-2-no-large-fov", "pred-to-inter-2-no-tissue-labels"]:
        assert n in names
    assert get_config("pred-to-inter-2").inject == "aspp"
    assert get_config("pred-to-inter-2", cell_dropout=0.3).cell_dropout == 0.3
    assert get_config("feature-sharing", sharing=["t2c", "none", "c2t"]).sharing == ("t2c", "none", "c2t")
    with pytest.raises(KeyError, match="unknown model"):
        get_config("no-such-model")
    with pytest.raises(ValueError, match="unknown CellTissueConfig fields"):
        get_config("cell-only", dropuot=0.3)


@pytest.mark.parametrize("changes, message", [
    (dict(inject="aspp"), "tissue_branch"),
    (dict(tissue_branch=True, inject="aspp", sharing=("c2t", "none", "none")), "no c2t"),
    (dict(architecture="unet", tissue_branch=True, inject="aspp"), "U-Net"),
    (dict(tissue_branch=True, sharing=("both", "bogus", "none")), "sharing"),
    (dict(inject="middle", tissue_branch=True), "inject"),
    (dict(cell_dropout=1.0), "cell_dropout"),
])
def test_config_rejects_impossible_combinations(changes, message):
    with pytest.raises(ValueError, match=message):
        CellTissueConfig(**changes)


def test_all_sharing_configs_are_the_64_triples():
    configs = all_sharing_configs()
    assert len(configs) == 64 == len(set(configs))
    assert all(len(c) == 3 and set(c) <= set(SHARE_MODES) for c in configs)


def test_tissue_one_hot_ignores_unknown_and_background():
    mask = torch.tensor([[[0, 1, 2, 255]]])
    oh = tissue_one_hot(mask, 2)
    assert oh.shape == (1, 2, 1, 4)
    assert oh[0, :, 0].T.tolist() == [[0, 0], [1, 0], [0, 1], [0, 0]]
    assert tissue_index(mask, 2).tolist() == [[[-100, 0, 1, -100]]]
    assert tissue_index(mask[:, None], 1, ignore_index=255).tolist() == [[[255, 0, 255, 255]]]


# ---------------------------------------------------------------------- every variant
@pytest.mark.parametrize("name", list_models())
def test_variant_forward_backward_shapes(name):
    """Any class counts, non-square inputs, cell and tissue of different sizes."""
    cfg = get_config(name, n_cell_classes=1, n_tissue_classes=3)
    model = cfg.build().train()
    cell, tissue, mask = make_inputs((64, 96), (96, 64))
    out = model(cell, tissue, WINDOWS, mask)
    assert out["cell_logits"].shape == (B, 2, 64, 96)
    if cfg.tissue_branch:
        t_hw = (64, 96) if cfg.tissue_input == "cell" else (96, 64)
        assert out["tissue_logits"].shape == (B, 3, *t_hw)
    else:
        assert set(out) == {"cell_logits"}
    loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    first_conv = next(m for m in model.cell.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, in_ch", [("cell-only", 3), ("tissue-label-leaking", 3 + 2),
                                         ("pred-to-input", 3 + 2), ("unet-cell-only", 3)])
def test_cell_input_channels(name, in_ch):
    model = build_model(name, **({} if name.startswith("unet") else SMALL))
    first_conv = next(m for m in model.cell.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_ch


# ---------------------------------------------------------------------- alignment
@pytest.mark.parametrize("name", list(PRED_TO_POSITIONS))
def test_pred_to_injection_matches_geometry(name):
    """The injected map is tissue_to_cell(softmax(tissue_logits)) at that boundary's size."""
    pos = PRED_TO_POSITIONS[name]
    model = build_model(name, n_tissue_classes=3, **SMALL).eval()
    seen = capture_inputs(model.cell, [pos])
    cell, tissue, _ = make_inputs((64, 64), (128, 96))
    with torch.no_grad():
        out = model(cell, tissue, WINDOWS)
    stride = model.cell.strides[pos]
    raw = model.cell.channels[pos]
    x = seen[pos]
    assert x.shape == (B, raw + 3, 64 // stride, 64 // stride)
    expected = tissue_to_cell(out["tissue_logits"].softmax(1), WINDOWS, x.shape[-2:], mode="bilinear")
    torch.testing.assert_close(x[:, raw:], expected)
    assert torch.all(x[1, raw:, 0, -1] == 0)  # window partly outside the tissue image → zeros


@pytest.mark.parametrize("name", list(PRED_TO_POSITIONS))
def test_pred_to_full_window_is_plain_resize(name):
    pos = PRED_TO_POSITIONS[name]
    model = build_model(name, **SMALL).eval()
    seen = capture_inputs(model.cell, [pos])
    cell, tissue, _ = make_inputs()
    with torch.no_grad():
        out = model(cell, tissue, FULL)
    raw = model.cell.channels[pos]
    injected = seen[pos][:, raw:]
    probs = out["tissue_logits"].softmax(1)
    resized = F.interpolate(probs, size=injected.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(injected, resized, atol=1e-5, rtol=1e-5)
    if pos == "input":
        torch.testing.assert_close(injected, probs, atol=1e-5, rtol=1e-5)


def test_label_leaking_matches_geometry():
    model = build_model("tissue-label-leaking", **SMALL).eval()
    seen = capture_inputs(model.cell, ["input"])
    cell, _, mask = make_inputs((64, 64), (96, 96))
    with torch.no_grad():
        model(cell, windows=WINDOWS, tissue_mask=mask)
    leaked = seen["input"][:, 3:]
    expected = tissue_to_cell(tissue_one_hot(mask, 2), WINDOWS, (64, 64), mode="nearest")
    assert torch.equal(leaked, expected)
    assert set(leaked.unique().tolist()) <= {0.0, 1.0} and leaked.sum(1).max() <= 1
    torch.testing.assert_close(seen["input"][:, :3], cell)
    # Full window, same size: the leaked map is the one-hot mask itself.
    with torch.no_grad():
        model(cell, windows=FULL, tissue_mask=mask[:, :64, :64])
    assert torch.equal(seen["input"][:, 3:], tissue_one_hot(mask[:, :64, :64], 2))


def test_feature_sharing_matches_geometry():
    """Both directions at all three positions: t2c via tissue_to_cell, c2t via cell_to_tissue."""
    model = build_model("feature-sharing", sharing=("both", "both", "both"), share_channels=5, **SMALL).eval()
    cell_in = capture_inputs(model.cell, ["encoder", "aspp", "decoder"])
    tissue_in = capture_inputs(model.tissue, ["encoder", "aspp", "decoder"])
    sent: dict[str, torch.Tensor] = {}
    for direction in ("t2c", "c2t"):
        for pos, conv in getattr(model, direction).items():
            conv.register_forward_hook(lambda _m, _a, y, key=f"{direction}:{pos}": sent.__setitem__(key, y))
    cell, tissue, _ = make_inputs((64, 64), (128, 128))
    with torch.no_grad():
        model(cell, tissue, WINDOWS)
    for pos in ("encoder", "aspp", "decoder"):
        raw = model.cell.channels[pos]
        c, t = cell_in[pos], tissue_in[pos]
        assert c.shape[1] == t.shape[1] == raw + 5
        assert c.shape[-1] == 64 // model.cell.strides[pos] and t.shape[-1] == 128 // model.tissue.strides[pos]
        torch.testing.assert_close(c[:, raw:], tissue_to_cell(sent[f"t2c:{pos}"], WINDOWS, c.shape[-2:], mode="bilinear"))
        torch.testing.assert_close(t[:, raw:], cell_to_tissue(sent[f"c2t:{pos}"], WINDOWS, t.shape[-2:], mode="area"))


def test_windows_as_placements_equal_tensor():
    placements = [Placement(48, 48, 32, 32, (64, 64), (128, 128)), Placement(0, 64, 64, 64, (64, 64), (128, 128))]
    win = torch.tensor([p.fractions() for p in placements])
    model = build_model("pred-to-inter-1", **SMALL).eval()
    cell, tissue, _ = make_inputs((64, 64), (128, 128))
    with torch.no_grad():
        a = model(cell, tissue, placements)["cell_logits"]
        b = model(cell, tissue, win)["cell_logits"]
    torch.testing.assert_close(a, b)


def test_tissue_input_cell_ablation_reads_cell_view():
    """'Tissue labels without large FoV': tissue branch on the cell view, full-extent window."""
    model = build_model("pred-to-inter-2-no-large-fov", **SMALL).eval()
    ref = build_model("pred-to-inter-2", **SMALL).eval()
    ref.load_state_dict(model.state_dict())
    cell, _, _ = make_inputs()
    with torch.no_grad():
        out = model(cell)
        expected = ref(cell, cell, FULL)
    assert out["tissue_logits"].shape == (B, 2, 64, 64)
    for k in out:
        torch.testing.assert_close(out[k], expected[k])


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", [*PRED_TO_POSITIONS, "feature-sharing", "pred-to-inter-2-no-tissue-labels"])
def test_cell_loss_reaches_tissue_branch(name):
    """End-to-end training: the cell output alone gives the tissue encoder a non-zero grad."""
    model = build_model(name).train()
    cell, tissue, _ = make_inputs()
    out = model(cell, tissue, WINDOWS)
    out["cell_logits"].square().mean().backward()
    grads = [p.grad for p in model.tissue.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    if name in PRED_TO_POSITIONS:  # the softmax of the head is what is injected
        assert model.tissue.head[0].weight.grad.abs().sum() > 0


def test_all_64_sharing_configs_forward_backward():
    """Every sharing triple builds, runs forward+backward, and the cell loss reaches the
    tissue branch exactly when some exchange goes tissue→cell."""
    cell, tissue, _ = make_inputs((32, 32), (64, 64))
    for sharing in all_sharing_configs():
        torch.manual_seed(0)
        model = build_model("feature-sharing", sharing=sharing, share_channels=4, **TINY).train()
        out = model(cell, tissue, WINDOWS)
        assert out["cell_logits"].shape == (B, 3, 32, 32), sharing
        assert out["tissue_logits"].shape == (B, 2, 64, 64), sharing
        assert set(model.t2c) == {p for p, s in zip(("encoder", "aspp", "decoder"), sharing) if s in ("t2c", "both")}
        assert set(model.c2t) == {p for p, s in zip(("encoder", "aspp", "decoder"), sharing) if s in ("c2t", "both")}
        tissue_params = list(model.tissue.encoder.parameters())
        grads = torch.autograd.grad(out["cell_logits"].square().mean(), tissue_params,
                                    retain_graph=True, allow_unused=True)
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached == bool(model.t2c), sharing
        (out["cell_logits"].square().mean() + out["tissue_logits"].square().mean()).backward()


# ---------------------------------------------------------------------- branch internals
@pytest.mark.parametrize("cell_p", [0.1, 0.3, 0.5])
def test_dropout2d_at_end_of_every_resnet_block(cell_p):
    model = build_model("pred-to-inter-2", cell_dropout=cell_p)
    for branch, p in ((model.cell, cell_p), (model.tissue, 0.1)):
        blocks = [m for m in branch.encoder.modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 3 + 4 + 6 + 3  # ResNet-34
        for blk in blocks:
            assert isinstance(blk.dropout, nn.Dropout2d) and blk.dropout.p == p
    # The block's output is the dropout's output (dropout is its last operation).
    blk = next(m for m in model.cell.encoder.modules() if isinstance(m, BasicBlock))
    got = {}
    blk.dropout.register_forward_hook(lambda _m, _a, y: got.__setitem__("drop", y))
    blk.register_forward_hook(lambda _m, _a, y: got.__setitem__("block", y))
    model.cell.encoder(torch.randn(1, 3, 32, 32))
    assert got["block"] is got["drop"]


def test_dropout2d_in_timm_resnet_blocks_and_local_timm_weights(tmp_path):
    """``tu-`` (timm) ResNet encoders get the same block dropout and local weights."""
    import timm
    from timm.models.resnet import BasicBlock as TimmBasicBlock
    from timm.models.resnet import Bottleneck as TimmBottleneck

    sd = timm.create_model("test_resnet").state_dict()
    path = tmp_path / "test_resnet.pth"
    torch.save(sd, path)
    model = build_model("pred-to-input", cell_dropout=0.3, encoder_weights=str(path), **TINY)
    blocks = [m for m in model.cell.encoder.modules() if isinstance(m, (TimmBasicBlock, TimmBottleneck))]
    assert blocks and all(isinstance(b.dropout, nn.Dropout2d) and b.dropout.p == 0.3 for b in blocks)
    torch.testing.assert_close(model.cell.encoder.model.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
    cell, tissue, _ = make_inputs()
    assert model(cell, tissue, WINDOWS)["cell_logits"].shape == (B, 3, 64, 64)


def test_branch_without_extras_equals_smp_deeplabv3plus():
    """Re-assembled stages compute exactly smp's DeepLabV3Plus (same modules, same order)."""
    import segmentation_models_pytorch as smp

    ref = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=3, decoder_channels=32).eval()
    ours = DeepLabBranch(classes=3, encoder_name="resnet18", decoder_channels=32, dropout=0.0).eval()
    rename = {"decoder.aspp.": "aspp.", "decoder.block": "decoder.block", "segmentation_head.": "head."}
    sd = {}
    for k, v in ref.state_dict().items():
        for a, b in rename.items():
            if k.startswith(a):
                k = b + k[len(a):]
        sd[k] = v
    ours.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    assert ours.encoder.output_stride == 16


def test_extra_channels_enter_the_next_module():
    branch = DeepLabBranch(classes=2, extra_channels={"input": 1, "encoder": 2, "aspp": 3, "decoder": 4}, **SMALL)
    seen = capture_inputs(branch)
    x = torch.randn(B, 3, 64, 64)
    extras = {"input": torch.zeros(B, 1, 64, 64), "encoder": torch.zeros(B, 2, 4, 4),
              "aspp": torch.zeros(B, 3, 4, 4), "decoder": torch.zeros(B, 4, 16, 16)}
    assert branch(x, extras).shape == (B, 2, 64, 64)
    assert seen["input"].shape == (B, 4, 64, 64)
    assert seen["encoder"].shape == (B, 512 + 2, 4, 4)
    assert seen["aspp"].shape == (B, 16 + 3, 4, 4)
    assert seen["decoder"].shape == (B, 16 + 4, 16, 16)


def test_input_checks():
    model = build_model("pred-to-inter-2", **SMALL)
    cell, tissue, _ = make_inputs()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(cell[..., :40], tissue, WINDOWS)
    with pytest.raises(ValueError, match="windows"):
        model(cell, tissue)
    with pytest.raises(ValueError, match="tissue_img"):
        model(cell, None, WINDOWS)
    with pytest.raises(ValueError, match="tissue_mask"):
        build_model("tissue-label-leaking", **SMALL)(cell, windows=WINDOWS)
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("unet-cell-only")(cell[..., :48, :48])


# ---------------------------------------------------------------------- input size multiples
NUCLEI_TINY = dict(encoder_name="resnet18", decoder_channels=(16, 16, 8, 8, 8), lunet_channels=(4, 8),
                   hrfe_channels=(8, 8, 16), hrfe_blocks=1, hrfe_stages=1)


@pytest.mark.parametrize("name", list_models(None))
def test_every_model_states_its_size_multiple(name):
    """One source: the branch / encoder stride. Config and model agree, the encoder really
    downsamples that much, and the model's own check names the model and the multiple."""
    nuclei = model_family(name) == "nuclei"
    cfg = get_config(name, **(NUCLEI_TINY if nuclei else TINY))
    model = cfg.build().eval()
    m = model.size_multiple
    assert m == cfg.size_multiple == size_multiples(None)[name] and m in (16, 32)
    bad = (2 * m, m + m // 2)
    if nuclei:
        assert m == model.encoder.body.output_stride
        with pytest.raises(ValueError, match=f"{name}: image height and width must be multiples of {m}"):
            model(torch.zeros(1, 3, *bad))
        return
    assert model.cell.size_multiple == model.cell.encoder.output_stride
    assert (model.cell_size_multiple, model.tissue_size_multiple) == (cfg.cell_size_multiple, cfg.tissue_size_multiple)
    if model.tissue is not None:
        assert model.tissue.size_multiple == model.tissue.encoder.output_stride
    reads_tissue = model.tissue is not None and cfg.tissue_input == "tissue"
    assert model.tissue_size_multiple == (model.tissue.size_multiple if reads_tissue else 1)
    assert model.size_multiple == max(model.cell_size_multiple, model.tissue_size_multiple)
    cell, tissue, mask = make_inputs((2 * m, 2 * m), (2 * m, 2 * m))
    with pytest.raises(ValueError, match=f"{name}: cell_img height and width must be multiples of {m}"):
        model(cell[..., : bad[1]], tissue, WINDOWS, mask)


def test_size_multiples_for_help_texts():
    assert size_multiples()["unet-cell-only"] == 32 and size_multiples()["cell-only"] == 16
    assert describe_size_multiples() == "16, or 32 for unet-cell-only"
    assert describe_size_multiples("nuclei") == "32"


# ---------------------------------------------------------------------- local ImageNet weights
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_local_file(tmp_path, suffix):
    import torchvision

    sd = torchvision.models.resnet34(weights=None).state_dict()  # ImageNet-style keys, incl. fc
    path = tmp_path / f"resnet34{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    model = build_model("pred-to-input", encoder_weights=str(path))
    for branch in (model.cell, model.tissue):
        enc = branch.encoder
        torch.testing.assert_close(enc.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])
        torch.testing.assert_close(enc.bn1.running_var, sd["bn1.running_var"])
        torch.testing.assert_close(enc.conv1.weight[:, :3], sd["conv1.weight"])
    assert model.cell.encoder.conv1.weight.shape[1] == 5  # RGB + 2 injected tissue channels
    assert model.tissue.encoder.conv1.weight.shape[1] == 3


def test_wrong_encoder_weights_file_names_the_file(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18(weights=None).state_dict()
    wrong = tmp_path / "resnet18.pth"
    torch.save(sd, wrong)
    with pytest.raises(InputError, match=r"resnet18\.pth.*missing keys"):
        build_model("cell-only", encoder_weights=str(wrong))
    bad_shape = dict(torchvision.models.resnet34(weights=None).state_dict())
    bad_shape["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    shaped = tmp_path / "shaped.pth"
    torch.save(bad_shape, shaped)
    with pytest.raises(InputError, match=r"shaped\.pth.*shape mismatch"):
        build_model("cell-only", encoder_weights=str(shaped))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"garbage\.pth"):
        build_model("cell-only", encoder_weights=str(garbage))
    with pytest.raises(InputError, match=r"absent\.pth.*not found"):
        build_model("cell-only", encoder_weights=str(tmp_path / "absent.pth"))
