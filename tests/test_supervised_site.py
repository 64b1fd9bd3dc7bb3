"""Single-site supervised pretraining (Ark's baseline) and Ark on a subset of the sites."""

import pytest
import torch

from eden_lib.checkpoints import load_checkpoint, load_pretrained
from eden_lib.methods import MethodConfigError, build_method
from eden_lib.methods.networks import encoder_2d
from eden_lib.methods.supervised import masked_bce
from tests.test_ark import BLOCK, ctx, site_batch, write_sites


def _cfg(methods: dict) -> dict:
    return {"profile": "test", "seed": 0,
            "data": {"image_size": 32, "cxr": {"labels": ["a", "b", "c"], "val_fraction": 0.1}},
            "pretrain": {"device": "cpu", "amp": False, "image_passes_2d": 40, "volume_passes_3d": 1, "epochs": 2,
                         "monitor_samples": 4, "backbone_2d": {"name": "resnet18", "widths": [4, 8, 8, 8]},
                         "unet2d_decoder": [8, 8, 8, 8, 8], "unet3d_width": 4},
            "methods": methods}


@pytest.fixture
def sites_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    write_sites(tmp_path / "data" / "prepared" / "sites")  # site0: 3 labels, 6 training rows; site1: 2 labels, 10
    (tmp_path / "data" / "prepared" / "cxr").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "cxr" / "images.npy").write_bytes(b"cxr")  # fingerprinted only
    return tmp_path


def test_loss_is_the_masked_bce_of_the_one_head_on_the_students_view():
    torch.manual_seed(0)
    method = build_method("supervised_site", {**BLOCK, "site": "site1"}, ctx((2,)))
    batch = site_batch(1, torch.Generator().manual_seed(0))
    batch["site"].zero_()  # the pipeline numbers the trained sites from 0
    out = method(batch, torch.Generator().manual_seed(1))
    from eden_lib.methods.ark import intensity, shared_geometry

    g = torch.Generator().manual_seed(1)
    view = intensity(shared_geometry(batch["image"], method.cfg, 32, g), method.cfg, g)
    logits = method.network.omni_heads[0](method.network(view))
    assert logits.shape == (4, 2)
    assert out["loss"].item() == pytest.approx(masked_bce(logits, batch["label"][:, :2]).item(), rel=1e-6)
    assert set(method.exports()) == {"encoder"} and not hasattr(method, "teacher")


def test_config_names_the_bad_key():
    with pytest.raises(MethodConfigError, match=r"methods.supervised_site: unknown keys \['sites'\]"):
        build_method("supervised_site", {**BLOCK, "sites": ["a"]}, ctx((2,)))
    with pytest.raises(MethodConfigError, match=r"methods.supervised_site.site = ''"):
        build_method("supervised_site", {**BLOCK, "site": ""}, ctx((2,)))
    with pytest.raises(MethodConfigError, match="supervised_site trains on one site"):
        build_method("supervised_site", BLOCK, ctx((3, 2)))
    with pytest.raises(MethodConfigError, match=r"methods.ark.sites = \['a', 'a'\]; expected distinct"):
        build_method("ark", {**BLOCK, "sites": ["a", "a"]}, ctx())


def test_pipeline_trains_on_the_one_site_and_exports_its_encoder(sites_root):
    from eden_lib.pipeline import pretrain

    cfg = _cfg({"supervised_site": {**BLOCK, "site": "site1"}})
    result = pretrain.pretrain_dims(cfg, "supervised_site", 2)
    assert result["complete"] and len(result["history"]) == 2
    state = load_checkpoint(pretrain.checkpoint_dir("supervised_site", 2) / "last.pt")["model"]
    assert state["network.omni_heads.0.weight"].shape == (2, 16)  # site1's two labels, one head
    assert not any(k.startswith("network.omni_heads.1") for k in state)
    encoder = encoder_2d(ctx())
    assert load_pretrained(sites_root / "data" / "models" / "supervised_site" / "encoder.pt", encoder)["source"] == "eden"


def test_unknown_site_fails_naming_the_key_and_the_prepared_sites(sites_root):
    from eden_lib.pipeline import pretrain

    with pytest.raises(MethodConfigError, match=r"methods.supervised_site.site: unknown sites \['nowhere'\]; the "
                                                r"prepared sites are \['site0', 'site1'\]"):
        pretrain.pretrain_dims(_cfg({"supervised_site": {**BLOCK, "site": "nowhere"}}), "supervised_site", 2)
    with pytest.raises(MethodConfigError, match=r"methods.ark.sites: unknown sites \['x'\]"):
        pretrain.pretrain_dims(_cfg({"ark": {**BLOCK, "sites": ["site1", "x"]}}), "ark", 2)


def test_ark_trains_on_its_sites_in_the_order_given(sites_root):
    from eden_lib.pipeline import pretrain

    cfg = _cfg({"ark": {**BLOCK, "sites": ["site1", "site0"]}})
    assert pretrain.trained_sites("ark", build_method("ark", cfg["methods"]["ark"], ctx()).cfg) == ["site1", "site0"]
    pretrain.pretrain_dims(cfg, "ark", 2)
    state = load_checkpoint(pretrain.checkpoint_dir("ark", 2) / "last.pt")["model"]
    # head 0 is site1's (2 labels), head 1 site0's (3 labels)
    assert state["student.omni_heads.0.weight"].shape[0] == 2 and state["student.omni_heads.1.weight"].shape[0] == 3
