"""Swin-UNETR as the study's 3D network (Alice's paper-profile encoder): shapes and gradients, the UNet3D interface,
config errors, one Alice step on it, and its consumers: transfer loading, nodule classification and segmentation
(both protocols), PE detection for the FROC stage (dira_caid_transfer_alice_cadpe.md section 4)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from eden_lib.methods import networks
from eden_lib.methods.alice import Alice, AliceConfig
from eden_lib.methods.base import BuildContext, MethodConfigError, parse_config
from eden_lib.models.swin_unetr import SWIN_UNETRS, SwinUNETR3D, SwinUNETRSpec, build_swin_unetr, swin_unetr_spec

TINY = {"name": "swin_unetr", "feature_size": 12, "window": 4}
SIZE = (64, 32, 32)  # the smallest the whole network trains on: a bottleneck of more than one voxel
ALICE = {"batch_size": 2, "out_dim": 32, "patch_out_dim": 16, "head_in_dim": 16, "hidden_dim": 32,
         "bottleneck_dim": 8, "casa_heads": 4, "crop": list(SIZE), "backbone_3d": "swin_unetr"}


def _net(seed: int = 0) -> SwinUNETR3D:
    torch.manual_seed(seed)
    return build_swin_unetr(TINY)


def _ctx() -> BuildContext:
    return BuildContext(spatial_dims=3, backbone_2d={"name": "resnet18", "widths": [8, 8, 8, 8]},
                        unet2d_decoder=(8, 8, 8, 8, 8), unet3d_width=4, n_labels=1, backbone_3d=TINY)


def test_shapes_gradients_and_the_unet3d_interface():
    net = _net()
    x = torch.rand(2, 1, *SIZE)
    features, anchor, out = net.encode_decode(x)
    assert features.shape == (2, 192, 2, 1, 1) and anchor.shape == (2, 96, 4, 2, 2) and out.shape == (2, 1, *SIZE)
    assert net.feature_channels == 192 and net.anchor_channels == 96
    assert out.min() > 0 and out.max() < 1  # the sigmoid output of out_tr, as the UNet3D's
    torch.testing.assert_close(net(x), out)
    torch.testing.assert_close(net.encode(x), features)
    torch.testing.assert_close(net.pooled_features(x), features.mean(dim=(2, 3, 4)))
    out.mean().backward()
    for name in ("swinViT.layers1.0.blocks.1.mlp.linear1.weight", "encoder1.layer.conv1.conv.weight",
                 "decoder1.transp_conv.conv.weight", "out_tr.final_conv.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    encoder = [k for k in net.state_dict() if k.startswith(net.encoder_state_prefixes)]
    assert encoder and all(k.startswith("swinViT.") for k in encoder) and "out_tr.final_conv.weight" in net.state_dict()
    # the encoder alone trains on the 32^3 nodule cubes; the whole network needs a bottleneck of several voxels
    net.pooled_features(torch.rand(2, 1, 32, 32, 32)).sum().backward()
    with pytest.raises(ValueError, match=r"cannot train on \(32, 32, 32\) inputs"):
        net(torch.rand(2, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"multiples of 32 .*got \(48, 32, 32\)"):
        net.encode(torch.rand(1, 1, 48, 32, 32))


def test_spec_errors_name_the_key():
    assert swin_unetr_spec({"name": "swin_unetr"}) == SwinUNETRSpec(48, (2, 2, 2, 2), (3, 6, 12, 24), 7)
    for cfg, match in [({"name": "nnformer"}, r"unknown 3D backbone 'nnformer'; allowed: \['swin_unetr'\]"),
                       ({"name": "swin_unetr", "feature_size": 16}, "feature_size = 16; expected a positive multiple"),
                       ({"name": "swin_unetr", "patch": 2}, r"unknown keys \['patch'\]"),
                       ({"name": "swin_unetr", "heads": [5, 6, 12, 24]}, "not multiples of heads"),
                       ({"name": "swin_unetr", "depths": [2, 2]}, "depths = .*4 positive integers")]:
        with pytest.raises(ValueError, match=match):
            swin_unetr_spec(cfg)


def test_alice_trains_on_swin_unetr_and_exports_it():
    torch.manual_seed(0)
    method = Alice(parse_config("alice", AliceConfig, ALICE), _ctx())
    method.set_total_steps(4)
    g = torch.Generator().manual_seed(0)
    batch = {"query": torch.rand(2, 1, *SIZE, generator=g), "key": torch.rand(2, 1, *SIZE, generator=g)}
    out = method(batch, torch.Generator().manual_seed(1))
    out["loss"].backward()
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_cls", "loss_patch", "loss_rec"))
    student = method.student
    assert student.head.query_proj.in_features == 192 and student.head.anchor_proj.in_features == 96
    assert student.head.anchor_proj.weight.grad is not None  # decoder tokens reach L_patch through CASA
    assert student.unet.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0
    exported = method.exports()["unet3d"]
    assert isinstance(exported, SwinUNETR3D) and exported is method.teacher.unet
    for block, match in [({"backbone_3d": "nnformer"}, r"methods.alice.backbone_3d = 'nnformer'; expected ''"),
                         ({"crop": [64, 64, 48]}, r"methods.alice.crop = \[64, 64, 48\]; .*multiple of 32")]:
        with pytest.raises(MethodConfigError, match=match):
            parse_config("alice", AliceConfig, {**ALICE, **block})


def _write(path, xyz: np.ndarray) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    image.SetSpacing((2.0, 2.0, 2.5))
    sitk.WriteImage(image, str(path))


def _ctpa(root) -> None:
    """One training and one test scan of SIZE: a contrast tube (300 HU) with a dark embolus box (50 HU) in lung."""
    g = np.random.default_rng(0)
    for scan_id, box in (("001", np.s_[20:30, 10:14, 12:18]), ("021", np.s_[36:44, 14:18, 10:16])):
        hu, ref = np.full(SIZE, -850.0), np.zeros(SIZE, np.int16)
        hu[:, 8:24, 8:24] = 300.0
        ref[box] = 1
        hu[ref > 0] = 50.0
        _write(root / f"{scan_id}.nrrd", (hu + g.normal(0, 15, SIZE)).astype(np.int16))
        _write(root / f"{scan_id}RefStd.nrrd", ref)


def test_transfer_and_froc_build_alices_swin_unetr_from_its_export(tmp_path, monkeypatch):
    from eden_lib import paths
    from eden_lib.checkpoints import load_checkpoint, save_weights
    from eden_lib.config import load_params
    from eden_lib.data.cad_pe import CADPE
    from eden_lib.evaluation.pe_detection import DetectionConfig, detect, train_detector
    from eden_lib.pipeline import transfer

    monkeypatch.setitem(SWIN_UNETRS, "swin_unetr", swin_unetr_spec(TINY))  # the paper preset, shrunk
    cfg = load_params(profile="paper", overrides={"pretrain.device": "cpu"})
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))  # models under tmp_path
    exported = _net(1)
    for run in ("alice", "alice_variant/k1"):  # a variant run: its export's info names the method
        save_weights(exported, paths.models_dir(run) / "unet3d.pt", method="alice", spatial_dims=3, export="unet3d")
    saved = load_checkpoint(paths.models_dir("alice") / "unet3d.pt")["state_dict"]
    for run in ("alice", "alice_variant/k1"):
        net = transfer._load_unet3d(cfg, run)
        assert isinstance(net, SwinUNETR3D) and all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    # nodule classification: the pooled encoder of the 32^3 candidate cubes and one linear output
    dim = networks.feature_dim_3d(transfer._context(cfg, "alice", 3))
    clf = transfer._PooledClassifier(transfer._load_unet3d(cfg, "alice"), dim)
    logits = clf(torch.rand(2, 1, 32, 32, 32))
    logits.sum().backward()
    assert dim == 192 and logits.shape == (2, 1)
    assert clf.unet.swinViT.layers4[0].blocks[0].attn.qkv.weight.grad is not None
    # nodule segmentation: logits out, the whole export or only its encoder loaded
    for protocol in ("finetune", "finetune_encoder"):
        torch.manual_seed(5)
        seg = transfer.segmentation_unet3d(cfg, "alice", protocol)
        y = seg(torch.rand(2, 1, *SIZE))
        y.pow(2).mean().backward()
        assert y.shape == (2, 1, *SIZE) and (y < 0).any() and seg.decoder1.transp_conv.conv.weight.grad is not None
        state = seg.state_dict()
        assert torch.equal(state["swinViT.patch_embed.proj.weight"], saved["swinViT.patch_embed.proj.weight"])
        assert torch.equal(state["decoder5.transp_conv.conv.weight"],
                           saved["decoder5.transp_conv.conv.weight"]) == (protocol == "finetune")
    # PE detection (the froc stage): fine-tuned on patches, then sliding-window detection on a test scan
    _ctpa(tmp_path)
    det = DetectionConfig(patch=SIZE, steps=1, batch_size=2, window=SIZE, threshold=0.5, device="cpu")
    net = train_detector(transfer.segmentation_unet3d(cfg, "alice", "finetune"), CADPE(tmp_path, "train"), det, 0)
    markers = detect(net, CADPE(tmp_path, "test"), det)
    assert list(markers.columns) == ["scan", "x", "y", "z", "confidence"]
    assert markers["confidence"].between(0.5, 1).all()


def test_profiles_give_alice_swin_unetr_in_the_paper_profile_only():
    from eden_lib.config import load_params
    from eden_lib.pipeline.pretrain import build_context

    paper, default = load_params(profile="paper"), load_params(profile="synthetic")
    assert build_context(paper, 3, 1, method="alice").backbone_3d == {"name": "swin_unetr"}
    assert paper["methods"]["alice"]["crop"] == [64, 64, 64]  # multiples of 32, as Swin-UNETR needs
    for cfg, method in ((paper, "models_genesis"), (default, "alice")):
        ctx = build_context(cfg, 3, 1, method=method)
        assert ctx.backbone_3d is None and networks.feature_dim_3d(ctx) == 16 * cfg["pretrain"]["unet3d_width"]
