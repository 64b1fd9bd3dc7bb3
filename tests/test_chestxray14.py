"""ChestX-ray14: SynthCXR write -> read round trip, and the loader on format-exact fixtures of the real variants."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eden_lib.data.chestxray14 import (
    DATA_ENTRY_HEADER,
    NIH14,
    ChestXray14,
    load_chestxray14_arrays,
    read_data_entry,
    write_chestxray14,
)
from eden_lib.data.synth_cxr import FINDINGS, LANDMARKS, SynthCXRConfig, generate_synth_cxr


@pytest.fixture(scope="module")
def synth():
    return generate_synth_cxr(SynthCXRConfig(n_patients=10, images_per_patient=2, size=64, prevalence=3.0), 4)


@pytest.fixture(scope="module")
def written(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    write_chestxray14(root, synth, test_fraction=0.3, seed=0)
    return root


def test_written_layout_is_nih(written, synth):
    lines = (written / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert lines[0] == DATA_ENTRY_HEADER and len(lines) == len(synth) + 1
    first = lines[1].split(",")
    assert first[0] == "00000001_000.png" and len(first) == 11
    assert all(set(row.split(",")[1].split("|")) <= set(NIH14) | {"No Finding"} for row in lines[1:])
    with Image.open(written / "images" / "00000001_000.png") as im:
        assert im.mode == "L" and im.size == (64, 64)
    train = (written / "train_val_list.txt").read_text().split()
    test = (written / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(synth.meta["image_index"])
    patients = lambda names: {int(n[:8]) for n in names}  # noqa: E731
    assert not patients(train) & patients(test) and len(patients(test)) == 3


def test_round_trip(written, synth):
    ds = ChestXray14(written)
    assert len(ds) == len(synth) and ds.landmark_names == LANDMARKS
    cols = [NIH14.index(f) for f in FINDINGS]
    other = [k for k in range(len(NIH14)) if k not in cols]
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 64, 64) and item["image"].dtype.is_floating_point
        np.testing.assert_array_equal(np.round(item["image"][0].numpy() * 255).astype(np.uint8), synth.images[i])
        np.testing.assert_array_equal(item["label"].numpy()[cols], synth.labels[i])
        assert (item["label"].numpy()[other] == 0).all()
        np.testing.assert_array_equal(item["mask"].numpy(), synth.masks[i])
        np.testing.assert_allclose(item["landmarks"].numpy(), synth.landmarks[i], atol=1e-4)
        row = synth.meta.iloc[i]
        assert (item["sex"], item["age"], item["patient_id"], item["image_index"]) == (
            row["sex"], row["age"], row["patient_id"], row["image_index"])
    assert ds.meta["site"].tolist() == synth.meta["site"].tolist()


def test_bulk_reader_matches_dataset_and_resizes(written, synth):
    arrays = load_chestxray14_arrays(written, FINDINGS, size=None)
    np.testing.assert_array_equal(arrays["images"], synth.images)
    np.testing.assert_array_equal(arrays["labels"], synth.labels.astype(np.float32))
    np.testing.assert_array_equal(arrays["masks"], synth.masks)
    small = load_chestxray14_arrays(written, FINDINGS, size=32, split="test")
    ds = ChestXray14(written, split="test", labels=FINDINGS, image_size=32)
    assert small["images"].shape == (len(ds), 32, 32) and small["masks"].shape == (len(ds), 32, 32)
    item = ds[0]
    np.testing.assert_array_equal(np.round(item["image"][0].numpy() * 255).astype(np.uint8), small["images"][0])
    np.testing.assert_allclose(item["landmarks"].numpy(), small["landmarks"][0])
    full = synth.landmarks[synth.meta["image_index"].tolist().index(item["image_index"])]
    np.testing.assert_allclose(item["landmarks"].numpy(), (full + 0.5) / 2 - 0.5, atol=1e-4)
    assert set(small["meta"]["image_index"]) == set((written / "test_list.txt").read_text().split())


# --- hand-made fixtures of the real format variants -------------------------------------------------------

ROWS = [
    ("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1, 58, "M", "PA"),
    ("00000001_001.png", "No Finding", 1, 1, 58, "M", "PA"),
    ("00000002_000.png", "Pleural_Thickening|Hernia", 0, 2, 81, "F", "AP"),
    ("00000003_000.png", "", 0, 3, 45, "F", "PA"),
]


def make_nih(root, sex_column="Patient Gender", trailing_comma=False, kaggle=False, rgb=None):
    header = DATA_ENTRY_HEADER.replace("Patient Gender", sex_column)
    end = ",\n" if trailing_comma else "\n"
    lines = [header + end] + [",".join(map(str, r)) + ",1024,1024,0.143,0.143" + end for r in ROWS]
    name = "Data_Entry_2017.csv" if kaggle else "Data_Entry_2017_v2020.csv"
    (root / name).write_text("".join(lines))
    rng = np.random.default_rng(0)
    for i, row in enumerate(ROWS):
        folder = root / f"images_{i % 2 + 1:03d}" / "images" if kaggle else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        im = Image.fromarray(np.stack([arr] * 3, -1)) if row[0] == rgb else Image.fromarray(arr)
        im.save(folder / row[0])
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png \r\n")
    return root


@pytest.mark.parametrize("sex_column, trailing", [("Patient Gender", False), ("Patient Sex", True)])
def test_read_data_entry_variants(tmp_path, sex_column, trailing):
    make_nih(tmp_path, sex_column, trailing)
    df = read_data_entry(tmp_path / "Data_Entry_2017_v2020.csv")
    assert list(df.columns) == ["image_index", "finding_labels", "follow_up", "patient_id", "age", "sex", "view"]
    assert df["sex"].tolist() == ["M", "M", "F", "F"] and df["age"].tolist() == [58, 58, 81, 45]
    assert df["follow_up"].tolist() == [0, 1, 0, 0] and df["patient_id"].tolist() == [1, 1, 2, 3]


def test_loader_labels_and_splits(tmp_path):
    ds = ChestXray14(make_nih(tmp_path, "Patient Sex", trailing_comma=True))
    labels = np.stack([ds[i]["label"].numpy() for i in range(len(ds))])
    expected = np.zeros((4, 14), np.float32)
    expected[0, [NIH14.index("Cardiomegaly"), NIH14.index("Emphysema")]] = 1
    expected[2, [NIH14.index("Pleural_Thickening"), NIH14.index("Hernia")]] = 1
    expected[3] = np.nan  # empty Finding Labels cell: unknown
    np.testing.assert_array_equal(labels, expected)
    assert "mask" not in ds[0] and "landmarks" not in ds[0]  # real NIH has no sidecars
    test = ChestXray14(tmp_path, split="test", labels=("Hernia", "Effusion"))
    assert [test[i]["image_index"] for i in range(len(test))] == ["00000002_000.png"]
    np.testing.assert_array_equal(test[0]["label"].numpy(), [1.0, 0.0])
    assert len(ChestXray14(tmp_path, split="train_val")) == 3


def test_kaggle_nested_folders_and_rgb_png(tmp_path):
    make_nih(tmp_path, kaggle=True, trailing_comma=True, rgb="00000002_000.png")
    ds = ChestXray14(tmp_path, image_size=8)
    item = ds[2]
    assert item["image_index"] == "00000002_000.png" and item["image"].shape == (1, 8, 8)
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    arrays = load_chestxray14_arrays(tmp_path, NIH14)
    assert arrays["images"].shape == (4, 16, 16) and arrays["masks"] is None and arrays["landmarks"] is None
    with Image.open(tmp_path / "images_001" / "images" / "00000002_000.png") as im:
        np.testing.assert_array_equal(arrays["images"][2], np.asarray(im)[..., 0])


def test_missing_column_is_named(tmp_path):
    make_nih(tmp_path)
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_text(path.read_text().replace("View Position", "Projection"))
    with pytest.raises(ValueError, match=r"Data_Entry_2017_v2020\.csv.*View Position"):
        read_data_entry(path)
    with pytest.raises(ValueError, match="View Position"):
        ChestXray14(tmp_path)


def test_missing_image_is_named(tmp_path):
    make_nih(tmp_path)
    (tmp_path / "images" / "00000002_000.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000002_000.png"):
        ChestXray14(tmp_path)


def test_bad_arguments(tmp_path, synth):
    make_nih(tmp_path)
    with pytest.raises(ValueError, match="split"):
        ChestXray14(tmp_path, split="validation")
    with pytest.raises(ValueError, match="Infiltrate"):
        ChestXray14(tmp_path, labels=("Infiltrate",))
    with pytest.raises(ValueError, match="test_fraction"):
        write_chestxray14(tmp_path / "out", synth, test_fraction=1.0, seed=0)
