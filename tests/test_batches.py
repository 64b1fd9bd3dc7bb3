import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib.data.batches import cxr_batches, random_resized_crop, resize_2d, volume_batches
from eden_lib.data.patches import crop_around, unpack_masks
from eden_lib.data.splits import carve_validation, patient_holdout


def test_resize_keeps_range_and_shape():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 128, 128), dtype=np.uint8)
    x = resize_2d(imgs, 32)
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert x[0].mean().item() == pytest.approx(imgs[0].mean() / 255, abs=1e-4)


def test_full_scale_crop_is_the_resized_image():
    img = torch.rand(2, 1, 64, 64)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop(img, 64, g, scale=(1.0, 1.0))
    assert torch.allclose(out, img, atol=1e-5)


def test_cxr_batches_are_seeded_and_cover_the_training_set():
    imgs = np.random.default_rng(0).integers(0, 256, (20, 64, 64), dtype=np.uint8)
    labels = np.arange(20, dtype=np.float32)[:, None].repeat(2, 1)
    train = np.arange(4, 20)
    factory = cxr_batches(imgs, labels, train, batch_size=4, steps=4, size=32)
    a = list(factory(0, torch.Generator().manual_seed(1)))
    b = list(factory(0, torch.Generator().manual_seed(1)))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    seen = torch.cat([x["label"][:, 0] for x in a]).numpy()
    assert sorted(seen) == list(range(4, 20))  # one permutation: every training image once, no test image
    assert a[0]["image"].shape == (4, 1, 32, 32)


def test_volume_batches_carry_labels():
    vols = np.random.default_rng(0).random((10, 8, 8, 8)).astype(np.float16)
    factory = volume_batches(vols, np.arange(10) % 2, np.arange(10), batch_size=5, steps=2)
    batch = next(iter(factory(0, torch.Generator().manual_seed(0))))
    assert batch["image"].shape == (5, 1, 8, 8, 8) and batch["label"].shape == (5, 1)


def test_crop_around_centres_the_patch_on_the_point():
    img = np.zeros((1, 100, 100), np.uint8)
    img[0, 30, 70] = 255  # (y=30, x=70)
    patch = crop_around(img, np.array([[70.0, 30.0]]), patch=11, size=11)[0, 0]
    assert np.unravel_index(patch.argmax().item(), patch.shape) == (5, 5)


def test_unpack_masks_reads_the_right_bits():
    field = np.zeros((1, 8, 8), np.uint8)
    field[0, :4] |= 1
    field[0, :, :2] |= 4
    m = unpack_masks(field, [0, 2], 8)
    assert m.shape == (1, 2, 8, 8)
    assert m[0, 0].sum() == 32 and m[0, 1].sum() == 16


def test_validation_is_carved_by_patient():
    meta = pd.DataFrame({"patient_id": np.repeat(np.arange(50), 2), "split": ["train_val"] * 80 + ["test"] * 20})
    split = carve_validation(meta, 0.2, seed=0)
    assert set(split) == {"train", "val", "test"}
    per_patient = pd.DataFrame({"p": meta["patient_id"], "s": split}).groupby("p")["s"].nunique()
    assert per_patient.max() == 1
    assert (split == "val").sum() == 16
    assert split.equals(carve_validation(meta, 0.2, seed=0))


def test_several_patches_per_image_match_one_at_a_time():
    imgs = np.random.default_rng(1).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    centers = np.random.default_rng(2).uniform(0, 40, (3, 4, 2))
    many = crop_around(imgs, centers, patch=12, size=8)
    single = torch.cat([crop_around(imgs[i : i + 1], centers[i, j][None], 12, 8) for i in range(3) for j in range(4)])
    assert many.shape == (12, 1, 8, 8)
    assert torch.allclose(many, single, atol=1e-6)


def test_patient_holdout_keeps_each_patient_on_one_side():
    patients = np.repeat(np.arange(50), 3)
    train, test = patient_holdout(patients, 0.3, seed=1)
    assert len(np.unique(patients[test])) == 15
    assert not set(patients[train]) & set(patients[test])
    assert sorted(np.concatenate([train, test])) == list(range(150))
    again, _ = patient_holdout(patients, 0.3, seed=1)
    other, _ = patient_holdout(patients, 0.3, seed=2)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ValueError, match="test_fraction"):
        patient_holdout(patients, 1.0, seed=1)
