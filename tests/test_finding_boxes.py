"""SynthCXR finding boxes and ChestX-ray14's ``BBox_List_2017.csv``: the generator's images are unchanged, each box
encloses its drawn finding, the file is written and read in the real format (dataset_formats.md §1, §13)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest

from eden_lib.data.chestxray14 import (
    BBOX_HEADER,
    BBOX_LIST,
    read_bbox_list,
    stored_sizes,
    write_chestxray14,
)
from eden_lib.data.synth_cxr import FINDINGS, MASKS, SynthCXRConfig, generate_synth_cxr, render, sample_params

SIZE = 64


def _digest(d) -> str:
    h = hashlib.sha256()
    for a in (d.images, d.masks, np.round(d.landmarks, 3), d.labels):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(d.meta.to_csv(index=False, float_format="%.6f").encode())
    return h.hexdigest()


def test_boxes_leave_images_masks_landmarks_labels_and_meta_unchanged():
    """Hashes computed with the generator before it gave boxes (no new random draw, no pixel changed)."""
    noisy = SynthCXRConfig(n_patients=12, images_per_patient=2, size=SIZE, prevalence=3.0, label_noise=0.1,
                           sex_effect=2.0)
    assert _digest(generate_synth_cxr(noisy, 5)) == "74c6184bcdebebe76215b28dc9500c8a6abd2e040f799923685a005a43417f60"
    plain = SynthCXRConfig(n_patients=20, size=SIZE, prevalence=2.0)
    assert _digest(generate_synth_cxr(plain, 5, workers=1)) == (
        "1b7d2e2b7fae40832f6b4cf4b963c53fe6d23bcc1c8f5cda226abfdfd02f4747")


@pytest.fixture(scope="module")
def synth():
    return generate_synth_cxr(SynthCXRConfig(n_patients=16, images_per_patient=2, size=SIZE, prevalence=3.0), 6)


def test_boxes_are_in_the_image_for_findings_present(synth):
    b = synth.boxes
    assert list(b.columns) == ["image_index", "finding", "x", "y", "w", "h"] and len(b) > 20
    assert set(b["finding"]) == set(FINDINGS)
    assert ((b[["x", "y"]] >= 0).all(axis=None) and (b["w"] >= 1).all() and (b["h"] >= 1).all()
            and (b["x"] + b["w"] <= SIZE).all() and (b["y"] + b["h"] <= SIZE).all())
    row = {name: i for i, name in enumerate(synth.meta["image_index"])}
    labelled = {(name, f) for name, lab in zip(synth.meta["image_index"], synth.labels)
                for f, on in zip(FINDINGS, lab) if on}
    assert set(zip(b["image_index"], b["finding"])) <= labelled  # label_noise 0: present = labelled
    assert len(set(zip(b["image_index"], b["finding"]))) >= 0.9 * len(labelled)  # nearly every one has a box
    per = b.groupby(["image_index", "finding"]).size()
    assert (per[per.index.get_level_values(1) != "Effusion"] == 1).all() and per.max() <= 2  # effusion: per side
    heart = (synth.masks >> MASKS.index("heart")) & 1
    for r in b[b["finding"] == "Cardiomegaly"].itertuples():
        ys, xs = np.nonzero(heart[row[r.image_index]])
        assert (r.x, r.y, r.w, r.h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    again = generate_synth_cxr(SynthCXRConfig(n_patients=16, images_per_patient=2, size=SIZE, prevalence=3.0), 6,
                               workers=1)
    pd.testing.assert_frame_equal(again.boxes, b)


@pytest.mark.parametrize("field, finding", [("eff_r", "Effusion"), ("ptx_l", "Pneumothorax"),
                                            ("cons_d", "Consolidation"), ("atel_d", "Atelectasis"),
                                            ("nod_d", "Nodule"), ("mass_d", "Mass")])
def test_each_box_encloses_what_its_finding_changes_in_the_image(field, finding):
    p = sample_params(SynthCXRConfig(n_patients=32, size=SIZE, prevalence=5.0), 2)
    sl, boxes = slice(0, 32), []
    base, _ = render(p, 2, SIZE, sl, 0, boxes)
    lesions = dataclasses.replace(p.lesions, **{field: np.zeros_like(getattr(p.lesions, field))})
    without, _ = render(dataclasses.replace(p, lesions=lesions), 2, SIZE, sl, 0)
    changed = np.abs(base.astype(int) - without.astype(int)) > 12
    inside = np.zeros_like(changed)  # the boxes, 2 pixels wider on each side (the film's blur)
    area = 0
    side = {"eff_r": lambda x: x < SIZE / 2, "ptx_l": lambda x: x >= SIZE / 2}.get(field, lambda x: True)
    for i, name, x, y, w, h in boxes:
        if name == finding and side(x + w / 2):
            inside[i, max(int(y) - 2, 0):int(y + h) + 2, max(int(x) - 2, 0):int(x + w) + 2] = True
            area += w * h
    has = getattr(p.lesions, field)[sl] > 0
    assert has.sum() >= 2 and changed[has].sum() > 0
    assert (changed & inside).sum() >= 0.95 * changed.sum(), finding
    assert not inside[~has].any()
    if finding != "Pneumothorax":  # the air gap darkens the film only slightly; opacities change their whole box
        assert area <= 2 * changed.sum(), finding


@pytest.fixture(scope="module")
def written(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    write_chestxray14(root, synth, test_fraction=0.3, seed=0)
    return root


def test_box_list_is_written_in_the_real_format_for_test_images_only(written, synth):
    lines = (written / BBOX_LIST).read_text().splitlines()
    assert lines[0] == BBOX_HEADER and len(lines[0].split(",")) == 9
    assert all(len(line.split(",")) == 6 for line in lines[1:])
    test = set((written / "test_list.txt").read_text().split())
    expected = synth.boxes[synth.boxes["image_index"].isin(test)].reset_index(drop=True)
    assert 0 < len(expected) < len(synth.boxes)
    got = read_bbox_list(written / BBOX_LIST)
    assert list(got.columns) == ["Image Index", "Finding Label", "x", "y", "w", "h"]
    assert got["Image Index"].tolist() == expected["image_index"].tolist()
    assert got["Finding Label"].tolist() == expected["finding"].tolist()
    np.testing.assert_array_equal(got[["x", "y", "w", "h"]].to_numpy(), expected[["x", "y", "w", "h"]].to_numpy())
    assert (stored_sizes(written, got["Image Index"].head(3)) == [SIZE, SIZE]).all()


REAL = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661
00014716_007.png,Infiltrate,686.067796610169,272.271186440678,171.389830508475,339.525423728813
00029817_009.png,Cardiomegaly,335.521685,432.5986,491.162963,271.169924,,,
"""


def test_reader_accepts_the_real_quirks(tmp_path):
    path = tmp_path / BBOX_LIST
    path.write_text(REAL)
    df = read_bbox_list(path)
    assert df["Finding Label"].tolist() == ["Atelectasis", "Infiltration", "Cardiomegaly"]
    assert df.loc[1, "x"] == pytest.approx(686.067796610169) and df.loc[2, "h"] == pytest.approx(271.169924)
    assert df[["x", "y", "w", "h"]].dtypes.eq(np.float64).all()
    path.write_text("Image Index,Finding Label,x,y,w,h\n00000001_000.png,Mass,1,2,3,4\n")
    assert read_bbox_list(path).loc[0, ["x", "y", "w", "h"]].tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("text, match", [
    ("Image Index,Bbox [x,y,w,h],,,\n", r"row 1 \(header\).*missing \['Finding Label'\]"),
    ("Image Index,Finding Label\n", r"row 1 \(header\).*missing \['Bbox \[x,y,w,h\]'\]"),
    (REAL + "00000001_000.png,Mass,1,2,3\n", r"row 5 has 5 field"),
    (REAL + "00000001_000.png,Tumour,1,2,3,4\n", r"row 5 \(00000001_000.png\) has label 'Tumour'"),
    (REAL + "00000001_000.png,Mass,1,two,3,4\n", r"row 5 \(00000001_000.png\) has coordinates"),
    (REAL + "00000001_000.png,Mass,1,2,-3,4\n", r"row 5 \(00000001_000.png\) has box"),
])
def test_reader_fails_naming_the_file_and_row(tmp_path, text, match):
    path = tmp_path / BBOX_LIST
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{BBOX_LIST}: {match}"):
        read_bbox_list(path)
    with pytest.raises(FileNotFoundError, match="box list not found"):
        read_bbox_list(tmp_path / "nope.csv")
