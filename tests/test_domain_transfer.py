"""BTL's domain-transfer claim: the SynthNatural source, the release layouts of the source models, the statistics,
and a tiny end-to-end run of both stages (natural_source, domain_transfer)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib import paths
from eden_lib.analysis import domain_transfer as stats
from eden_lib.checkpoints import detect_source, load_checkpoint, load_pretrained, save_atomic
from eden_lib.data.batches import colour_batches
from eden_lib.data.synth_natural import SHAPES, local_coordinates, render_natural, shape_mask
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.heads import moco_v2_projector
from eden_lib.pipeline.natural_source import moco_release, torchvision_state
from tests.test_checkpoint_layouts import TINY, torchvision_resnet50

# --- SynthNatural ---------------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_images_and_another_stream_others():
    a, b = render_natural(40, 32, seed=3), render_natural(40, 32, seed=3)
    for field in ("images", "labels", "masks", "textures", "poses"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    other = render_natural(40, 32, seed=3, stream=1)
    assert not np.array_equal(a.images, other.images)
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == np.uint8


def test_classes_are_balanced_and_one_hot_matches_the_labels():
    d = render_natural(8 * 7 + 3, 24, seed=0)
    counts = np.bincount(d.labels, minlength=len(SHAPES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 59
    assert np.array_equal(d.one_hot().argmax(1), d.labels) and d.one_hot().sum() == 59


#: (shape, points inside, points outside) in the shape's frame (outer radius 1, the triangle's vertex on +u)
CANONICAL = {
    "disc": ([(0, 0), (0.9, 0)], [(0.8, 0.8)]),
    "ring": ([(0.8, 0), (0, -0.7)], [(0, 0), (0.3, 0)]),
    "ellipse": ([(0, 0), (0.9, 0)], [(0, 0.6)]),
    "square": ([(0.7, 0.7), (0, 0)], [(0.9, 0)]),
    "triangle": ([(0.9, 0), (0, 0)], [(-0.9, 0)]),
    "star": ([(0.95, 0), (0, 0)], [(0.7 * math.cos(math.pi / 5), 0.7 * math.sin(math.pi / 5))]),
    "cross": ([(0.9, 0), (0, 0.9), (0, 0)], [(0.7, 0.7)]),
    "crescent": ([(-0.9, 0)], [(0, 0), (0.5, 0)]),
}


@pytest.mark.parametrize("name", SHAPES)
def test_each_shape_holds_its_known_points(name):
    inside, outside = CANONICAL[name]
    for points, expected in ((inside, True), (outside, False)):
        u, v = (torch.tensor([p[i] for p in points], dtype=torch.float32) for i in (0, 1))
        assert shape_mask(SHAPES.index(name), u, v).tolist() == [expected] * len(points), (name, points)


def test_the_shapes_are_distinct():
    axis = torch.linspace(-1.2, 1.2, 121)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    masks = [shape_mask(k, u, v) for k in range(len(SHAPES))]
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.8, (SHAPES[i], SHAPES[j], float(iou))


def test_labels_match_the_drawn_shapes():
    d = render_natural(64, 40, seed=1)
    u, v = local_coordinates(torch.from_numpy(d.poses), 40)
    for i, label in enumerate(d.labels):
        assert np.array_equal(shape_mask(int(label), u[i], v[i]).numpy(), d.masks[i])
        others = [k for k in range(len(SHAPES)) if k != label]
        assert all(not np.array_equal(shape_mask(k, u[i], v[i]).numpy(), d.masks[i]) for k in others)
        inside = d.images[i][:, d.masks[i]]  # (3, pixels): the shape is drawn in one colour
        assert d.masks[i].sum() > 20 and (inside == inside[:, :1]).all()


def test_colour_batches_crop_or_pass_whole_images_with_their_labels():
    images = np.zeros((6, 3, 16, 16), dtype=np.uint8)
    images[:, 0] = np.arange(6)[:, None, None] * 40  # the red channel encodes the row
    labels = np.eye(6, dtype=np.float32)
    whole = list(colour_batches(images, labels, 4, 3)(0, torch.Generator().manual_seed(0)))
    assert len(whole) == 3 and whole[0]["image"].shape == (4, 3, 16, 16)
    for batch in whole:
        rows = batch["label"].argmax(1)
        assert torch.allclose(batch["image"][:, 0, 0, 0], rows.float() * 40 / 255)
    crops = next(iter(colour_batches(images, labels, 4, 1, size=8)(0, torch.Generator().manual_seed(0))))
    assert crops["image"].shape == (4, 3, 8, 8) and crops["label"].shape == (4, 6)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        colour_batches(images, labels[:5], 4, 1)


# --- release layouts ------------------------------------------------------------------------------------------


def _rgb_encoder(seed: int = 0) -> ResNetEncoder:
    torch.manual_seed(seed)
    encoder = ResNetEncoder("resnet50", TINY, in_channels=3)
    for m in encoder.modules():  # non-trivial batch-norm statistics, so a wrong mapping shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return encoder.eval()


def test_the_supervised_source_is_a_torchvision_state_dict(tmp_path):
    encoder, fc = _rgb_encoder(), torch.nn.Linear(4 * TINY[-1], len(SHAPES))
    state = torchvision_state(encoder, fc)
    expected = torchvision_resnet50(TINY, in_channels=3, num_classes=len(SHAPES))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    save_atomic(state, tmp_path / "r.pth")
    assert detect_source(load_checkpoint(tmp_path / "r.pth")) == "torchvision"


def test_the_moco_source_is_a_moco_release_and_loads_into_the_grey_study_encoder(tmp_path):
    encoder, projector = _rgb_encoder(1), moco_v2_projector(4 * TINY[-1], 16, 8)
    ckpt = moco_release(encoder, projector, epoch=6, arch="resnet50")
    backbone = {k for k in torchvision_resnet50(TINY) if not k.startswith("fc.")}
    head = {f"fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert set(ckpt) == {"epoch", "arch", "state_dict"} and ckpt["epoch"] == 6
    assert set(ckpt["state_dict"]) == {f"module.encoder_q.{k}" for k in backbone | head}
    save_atomic(ckpt, tmp_path / "m.pth.tar")
    grey = ResNetEncoder("resnet50", TINY, in_channels=1).eval()
    info = load_pretrained(tmp_path / "m.pth.tar", grey)
    assert info["source"] == "moco" and info["converted"] == ["conv1.weight"] and len(info["dropped"]) == 4
    # BTL feeds a grey radiograph as three equal channels: the summed stem gives exactly that
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), encoder(x.repeat(1, 3, 1, 1)), atol=1e-5)


# --- statistics -----------------------------------------------------------------------------------------------


def _scores(**offsets) -> dict[str, pd.Series]:
    base = pd.Series([0.60, 0.62, 0.61], index=[0, 1, 2])
    return {c: base + np.asarray(offsets.get(c, 0.0)) for c in stats.CONDITIONS}


def test_paired_comparisons_are_paired_t_over_seeds_with_holm():
    scores = _scores(natural_supervised_cxr=[0.05, 0.06, 0.07], natural_moco_v2_cxr=[0.01, -0.01, 0.0],
                     supervised=[0.10, 0.10, 0.11])
    comps = stats.paired_comparisons(scores)
    assert len(comps) == len(stats.COMPARISONS)
    t = stats.find(comps, "natural_supervised_cxr", "natural_supervised")
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n) of the differences 0.05, 0.06, 0.07
    assert t["diff"] == pytest.approx(0.06) and t["ci_low"] == pytest.approx(0.06 - half)
    assert t["n_pairs"] == 3 and t["p"] < 0.01
    finite = sorted(c["p"] for c in comps if np.isfinite(c["p"]))  # Holm: max over the smaller p of (m - rank) p
    rank = max(i for i, p in enumerate(finite) if p == t["p"])
    assert t["p_holm"] == pytest.approx(min(1.0, max((len(finite) - i) * p for i, p in enumerate(finite[:rank + 1]))))
    same = stats.find(comps, "natural_moco_v2", "scratch")  # identical runs: no variance, no p
    assert same["diff"] == 0 and np.isnan(same["p"]) and np.isnan(same["p_holm"])
    assert stats.source_verdict(t) == "held" and stats.source_verdict(same) == "was not testable"
    assert stats.source_verdict(stats.find(comps, "natural_moco_v2_cxr", "natural_moco_v2")) == "was not supported"


def test_missing_conditions_leave_their_comparisons_out():
    scores = _scores(natural_supervised_cxr=[0.05, 0.06, 0.07])
    del scores["scratch"], scores["supervised"]
    comps = stats.paired_comparisons(scores)
    assert {c["family"] for c in comps} == {"continual - direct"}
    assert stats.find(comps, "natural_supervised", "scratch") is None
    assert stats.source_verdict(None) == "was not testable"


@pytest.mark.parametrize("per_source, verdict", [
    ({"supervised": "held", "moco_v2": "held"}, "held"),
    ({"supervised": "held", "moco_v2": "was not supported"}, "held in part"),
    ({"supervised": "held", "moco_v2": "did not hold"}, "did not hold"),
    ({"supervised": "was not supported", "moco_v2": "was not testable"}, "was not supported"),
    ({"supervised": "was not testable", "moco_v2": "was not testable"}, "was not testable"),
])
def test_the_claim_verdict(per_source, verdict):
    assert stats.claim_verdict(per_source) == verdict


def test_the_sentence_names_the_verdict_and_both_sources():
    scores = _scores(natural_supervised_cxr=[-0.05, -0.06, -0.07], natural_moco_v2_cxr=[0.01, -0.01, 0.0])
    comps = stats.paired_comparisons(scores)
    sentence = stats.verdict_sentence("did not hold", comps, "finetune@1")
    assert "bridges the domain gap did not hold" in sentence and "finetune@1" in sentence
    assert "by -0.060 (95 % CI" in sentence and "for the natural supervised source" in sentence
    # differences 0.01, -0.01, 0: mean 0, half-width t(0.975, 2) x 0.01 / sqrt(3) = 0.025
    assert "by +0.000 (95 % CI -0.025 to +0.025, Holm p = 1) for the natural moco_v2 source" in sentence
    assert "(moco_v2 source)" in sentence


def test_seed_scores_read_one_evaluation():
    records = [{"task": "cxr_classification", "protocol": "finetune", "budget": "1", "seed": s, "value": 0.5 + s}
               for s in (1, 0)]
    records += [{"task": "cxr_classification", "protocol": "linear_probe", "budget": "1", "seed": 0, "value": 9.0}]
    assert stats.seed_scores(records, "finetune", "1").to_dict() == {0: 0.5, 1: 1.5}
    assert stats.seed_scores(records, "linear_probe", "0.1").empty


@pytest.mark.parametrize("key, value", [("continual_passes", 0), ("source", 3), ("source.n_images", 4),
                                        ("source.render_size", 16), ("source.image_passes", 1.5)])
def test_bad_blocks_fail_naming_the_key(key, value):
    from eden_lib.pipeline.domain_transfer import check_domain_transfer

    block = {"source": {"n_images": 64, "n_test": 16, "render_size": 48, "image_passes": 100}, "continual_passes": 50}
    check_domain_transfer(block)
    bad = {**block, "source": dict(block["source"])}
    if key.startswith("source."):
        bad["source"][key.split(".")[1]] = value
    else:
        bad[key] = value
    with pytest.raises(ValueError, match=rf"claims\.domain_transfer\.{key}"):
        check_domain_transfer(bad)


# --- both stages, tiny, in a scratch root ---------------------------------------------------------------------


def _tiny_study(tmp_path, monkeypatch) -> dict:
    """The smoke profile shrunk: 24 prepared 32 x 32 radiographs with 7 findings, a tiny ResNet-18, tiny budgets;
    the transfer stage's records of scratch and supervised written as that stage writes them."""
    from eden_lib.config import load_params
    from eden_lib.data.prepared import write_cxr
    from eden_lib.reporting.io import write_json

    cfg = load_params(profile="smoke")
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    names = cfg["data"]["cxr"]["labels"]
    n, g = 24, np.random.default_rng(0)
    labels = (g.random((n, len(names))) < 0.5).astype(np.float32)
    labels[:2], labels[2:4], labels[-2:], labels[-4:-2] = 1, 0, 1, 0  # both classes in train and in test
    meta = pd.DataFrame({"patient_id": np.arange(n), "split": ["train"] * 14 + ["val"] * 4 + ["test"] * 6})
    write_cxr(paths.prepared_dir("cxr"), g.integers(0, 256, (n, 32, 32), dtype=np.uint8),
              np.zeros((n, 1, 32, 32)), np.zeros((n, 0, 2)), labels, meta, {"labels": names, "masks": []})
    cfg["data"]["image_size"] = 32
    cfg["pretrain"].update(device="cpu", amp=False, epochs=1, monitor_samples=0,
                           backbone_2d={"name": "resnet18", "widths": [4, 4, 8, 8]}, unet2d_decoder=[8, 8, 4, 4, 4])
    cfg["methods"]["supervised"] = {"dims": [2, 3], "batch_size": 4, "lr": 0.01}
    cfg["methods"]["moco_v2"] = {"batch_size": 4, "queue_size": 4, "bn_splits": 2, "moco_hidden": 8, "moco_dim": 4}
    cfg["claims"]["domain_transfer"] = {"source": {"n_images": 16, "n_test": 8, "render_size": 32, "image_passes": 8},
                                        "continual_passes": 8}
    cfg["transfer"].update(seeds=[0, 1], label_fractions=[0.5, 1.0], workers=2, min_positives=1)
    cfg["transfer"]["finetune"].update(min_steps=2, evaluations=1, batch_size=4)
    cfg["transfer"]["validation"]["size"] = 4
    cfg["tasks"]["cxr_classification"].update(finetune_epochs=1)
    cfg["active_methods"] = ["scratch", "supervised"]
    for method, value in (("scratch", 0.5), ("supervised", 0.7)):
        runs = [{"task": "cxr_classification", "protocol": p, "budget": b, "seed": s, "metric": "auc",
                 "value": value + 0.01 * s, "per_class": {}} for p, b in (("finetune", "1"), ("linear_probe", "1"),
                                                                      ("linear_probe", "0.5")) for s in (0, 1)]
        write_json({"method": method, "runs": runs}, paths.metrics_file("transfer", method))
    return cfg


def test_both_stages_run_end_to_end_on_a_tiny_study(tmp_path, monkeypatch):
    from eden_lib.pipeline.domain_transfer import run_domain_transfer
    from eden_lib.pipeline.natural_source import release_file, run_natural_source

    cfg = _tiny_study(tmp_path, monkeypatch)
    source = run_natural_source(cfg)
    assert {m: source["models"][m]["layout"] for m in ("supervised", "moco_v2")} == {"supervised": "torchvision",
                                                                                      "moco_v2": "moco"}
    assert all(m["converted"] == ["conv1.weight"] for m in source["models"].values())
    assert release_file("supervised").is_file() and (paths.figures_dir("natural_source") / "samples.png").is_file()

    metrics = run_domain_transfer(cfg)
    assert metrics["conditions"] == list(stats.CONDITIONS)
    assert metrics["evaluations"] == ["finetune@1", "linear_probe@1", "linear_probe@0.5"]
    assert {m: s["source"] for m, s in metrics["sources"].items()} == {"supervised": "torchvision", "moco_v2": "moco"}
    assert metrics["continual"]["moco_v2"]["init"]["source"] == "moco"
    assert metrics["continual"]["moco_v2"]["init"]["synchronised"]  # the key encoder started from the file too
    runs = pd.DataFrame(metrics["runs"])
    assert set(runs["condition"]) == set(stats.CONDITIONS) - {"scratch", "supervised"}
    assert set(zip(runs["protocol"], runs["budget"])) == {("finetune", "1"), ("linear_probe", "1"),
                                                          ("linear_probe", "0.5")}
    summary = metrics["summary"]["finetune@1"]
    assert summary["supervised"]["mean"] == pytest.approx(0.705) and summary["scratch"]["n"] == 2
    assert len(metrics["comparisons"]["finetune@1"]) == len(stats.COMPARISONS)
    assert metrics["verdict"] in {"held", "held in part", "did not hold", "was not supported", "was not testable"}
    assert metrics["verdict"] in metrics["sentence"]
    assert (paths.metrics_file("claims", "domain_transfer")).is_file()
    assert (paths.figures_dir("claims") / "domain_transfer.png").is_file()
    assert (paths.models_dir("domain_transfer/natural_moco_v2_cxr") / "encoder.pt").is_file()

    from eden_lib.pipeline.report import domain_transfer_section

    text = "\n".join(domain_transfer_section())
    assert metrics["sentence"] in text and "natural_supervised_cxr - natural_supervised" in text
    assert "read back as the `moco` layout" in text and "figures/claims/domain_transfer.png" in text
