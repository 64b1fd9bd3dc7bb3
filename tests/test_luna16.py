"""LUNA16 layout: hand-made format-exact fixture, world <-> voxel maps, SynthCT round trip, cube extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from eden_lib.data.luna16 import (
    LUNA16Index,
    extract_candidate_cubes,
    extract_nodule_patches,
    gather_cubes,
    read_scan,
    voxel_to_world,
    world_to_voxel,
    write_luna16,
)
from eden_lib.data.synth_ct import SynthCTConfig, generate_synth_ct

OFFSET = (-100.5, 50.25, -300.0)
SPACING = (0.7, 0.8, 2.5)
KNOWN_ZYX = (3, 5, 11)
UIDS = {"identity": "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001",
        "flipped": "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000002"}
MATRICES = {"identity": "1 0 0 0 1 0 0 0 1", "flipped": "-1 0 0 0 -1 0 0 0 1"}
HEADER = """ObjectType = Image
NDims = 3
BinaryData = True
BinaryDataByteOrderMSB = False
CompressedData = False
TransformMatrix = {matrix}
Offset = {offset}
CenterOfRotation = 0 0 0
AnatomicalOrientation = RAI
ElementSpacing = {spacing}
DimSize = 16 16 8
ElementType = MET_SHORT
ElementDataFile = {uid}.raw
"""


def _known_world(kind: str) -> tuple[float, float, float]:
    """World mm of KNOWN_ZYX, computed by hand: x = Ox + sign * i * sx, etc."""
    z, y, x = KNOWN_ZYX
    sign = -1 if kind == "flipped" else 1
    return OFFSET[0] + sign * x * SPACING[0], OFFSET[1] + sign * y * SPACING[1], OFFSET[2] + z * SPACING[2]


@pytest.fixture()
def fixture_root(tmp_path: Path) -> Path:
    """Two 16x16x8 int16 scans written byte by byte (header text + little-endian raw), one flipped."""
    for k, kind in enumerate(("identity", "flipped")):
        folder = tmp_path / f"subset{k}"
        folder.mkdir()
        hu = np.full((8, 16, 16), -800, dtype=np.int16)
        hu[KNOWN_ZYX] = 400
        (folder / f"{UIDS[kind]}.mhd").write_text(HEADER.format(
            matrix=MATRICES[kind], offset=" ".join(map(str, OFFSET)), spacing=" ".join(map(str, SPACING)),
            uid=UIDS[kind]))
        hu.astype("<i2").tofile(folder / f"{UIDS[kind]}.raw")
    rows = [(UIDS[k], *_known_world(k)) for k in ("identity", "flipped")]
    pd.DataFrame([(*r, 6.0) for r in rows], columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]) \
        .to_csv(tmp_path / "annotations.csv", index=False)
    far = (UIDS["identity"], 1000.0, 1000.0, 1000.0, 0)  # far outside the scan
    pd.DataFrame([(*r, 1) for r in rows] + [far], columns=["seriesuid", "coordX", "coordY", "coordZ", "class"]) \
        .to_csv(tmp_path / "candidates_V2.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("kind", ["identity", "flipped"])
def test_world_to_voxel_maps_fixture_annotation_to_known_voxel(fixture_root, kind):
    index = LUNA16Index(fixture_root)
    scan = read_scan(index.scan_path(UIDS[kind]))
    assert scan.hu.shape == (8, 16, 16) and scan.hu.dtype == np.int16
    np.testing.assert_allclose(scan.origin, OFFSET)
    np.testing.assert_allclose(scan.spacing, SPACING)
    ann = index.read_annotations().set_index("seriesuid").loc[UIDS[kind]]
    zyx = world_to_voxel(ann[["coordX", "coordY", "coordZ"]].to_numpy(float), scan.origin, scan.spacing,
                         scan.direction)
    np.testing.assert_allclose(zyx, KNOWN_ZYX, atol=1e-9)
    assert scan.hu[KNOWN_ZYX] == 400


def test_world_voxel_maps_are_inverse_and_vectorised():
    g = np.random.default_rng(0)
    rot = np.linalg.qr(g.normal(size=(3, 3)))[0]
    zyx = g.uniform(0, 50, size=(100, 3))
    xyz = voxel_to_world(zyx, OFFSET, SPACING, rot)
    assert xyz.shape == (100, 3)
    np.testing.assert_allclose(world_to_voxel(xyz, OFFSET, SPACING, rot), zyx, atol=1e-9)
    # agrees with SimpleITK's own physical-point maps
    image = sitk.Image(16, 16, 8, sitk.sitkInt16)
    image.SetOrigin(OFFSET), image.SetSpacing(SPACING), image.SetDirection(tuple(rot.ravel()))
    np.testing.assert_allclose(xyz[0], image.TransformContinuousIndexToPhysicalPoint(tuple(zyx[0][::-1])))


def test_index_subsets_and_csv_errors(fixture_root):
    assert list(LUNA16Index(fixture_root, subsets=[1]).scans) == [UIDS["flipped"]]
    assert len(LUNA16Index(fixture_root, subsets=[1]).read_annotations()) == 1
    (fixture_root / "candidates_V2.csv").rename(fixture_root / "candidates.csv")
    assert len(LUNA16Index(fixture_root).read_candidates()) == 3  # falls back to the deprecated file
    (fixture_root / "candidates.csv").unlink()
    with pytest.raises(FileNotFoundError, match="candidates_V2.csv"):
        LUNA16Index(fixture_root).read_candidates()
    pd.DataFrame({"seriesuid": [UIDS["identity"]], "coordX": [0.0]}).to_csv(fixture_root / "annotations.csv")
    with pytest.raises(ValueError, match=r"annotations.csv: missing columns \['coordY', 'coordZ', 'diameter_mm'\]"):
        LUNA16Index(fixture_root).read_annotations()
    with pytest.raises(FileNotFoundError, match="no subset<k>/"):
        LUNA16Index(fixture_root / "subset0")
    with pytest.raises(FileNotFoundError, match="seg-lungs-LUNA16"):
        LUNA16Index(fixture_root).lung_mask_path(UIDS["identity"])


def test_candidate_cubes_on_fixture_centre_and_padding(fixture_root):
    out = extract_candidate_cubes(LUNA16Index(fixture_root), size=(3, 5, 5), dtype=np.float32)
    assert out["cubes"].shape == (3, 3, 5, 5)
    assert list(out["labels"]) == [1, 0, 1] and list(out["subset"]) == [0, 0, 1]
    for m in np.flatnonzero(out["labels"] == 1):
        cube = out["cubes"][m]
        assert cube[1, 2, 2] == pytest.approx((400 + 1000) / 2000)
        assert cube.sum() == pytest.approx(cube[1, 2, 2] + (cube.size - 1) * 0.1)
    far = out["cubes"][out["labels"] == 0][0]
    np.testing.assert_allclose(far, 0.1)  # outside the scan: the scan minimum (-800 HU) windowed


def test_gather_cubes_matches_slicing_and_fills_outside():
    vol = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    cubes = gather_cubes(vol, np.array([[3, 3, 4], [0, 0, 0]]), (2, 3, 4), fill=-1)
    np.testing.assert_array_equal(cubes[0], vol[2:4, 2:5, 2:6])
    assert (cubes[1][:1] == -1).all() and (cubes[1][1:, 1:, 2:] == vol[:1, :2, :2]).all()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    scans = generate_synth_ct(SynthCTConfig(n_scans=2, nodules_per_scan=(2, 2),
                                            direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)), seed=11)
    root = tmp_path_factory.mktemp("luna")
    write_luna16(root, scans, n_subsets=10)
    return root, scans


def test_write_luna16_layout_and_round_trip(synth_root):
    root, scans = synth_root
    index = LUNA16Index(root)
    assert sorted(index.scans) == sorted(s.seriesuid for s in scans)
    assert index.subset_of == {scans[0].seriesuid: 0, scans[1].seriesuid: 1}
    s = scans[1]
    header = (root / "subset1" / f"{s.seriesuid}.mhd").read_text().splitlines()
    keys = [line.split(" = ")[0] for line in header]
    assert keys == ["ObjectType", "NDims", "BinaryData", "BinaryDataByteOrderMSB", "CompressedData",
                    "TransformMatrix", "Offset", "CenterOfRotation", "AnatomicalOrientation", "ElementSpacing",
                    "DimSize", "ElementType", "ElementDataFile"]
    assert "ElementType = MET_SHORT" in header and "TransformMatrix = -1 0 0 0 -1 0 0 0 1" in header
    raw = np.fromfile(root / "subset1" / f"{s.seriesuid}.raw", dtype="<i2").reshape(s.hu.shape)
    np.testing.assert_array_equal(raw, s.hu)
    back = read_scan(index.scan_path(s.seriesuid))
    np.testing.assert_array_equal(back.hu, s.hu)
    np.testing.assert_allclose(back.origin, s.origin)
    np.testing.assert_allclose(back.spacing, s.spacing)
    np.testing.assert_allclose(back.direction, s.direction)
    lung = sitk.ReadImage(str(index.lung_mask_path(s.seriesuid)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lung), s.lung_mask)
    assert (root / "seg-lungs-LUNA16" / f"{s.seriesuid}.zraw").is_file()
    assert list(pd.read_csv(root / "annotations.csv").columns) == ["seriesuid", "coordX", "coordY", "coordZ",
                                                                    "diameter_mm"]
    cand = pd.read_csv(root / "candidates_V2.csv")
    assert list(cand.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert len(cand) == sum(len(x.candidates) for x in scans)


def test_candidate_cubes_centred_on_nodules_are_bright_at_centre(synth_root):
    root, _ = synth_root
    index = LUNA16Index(root)
    ann = index.read_annotations()
    out = extract_candidate_cubes(index, size=16)
    assert out["cubes"].shape[1:] == (16, 16, 16) and out["cubes"].dtype == np.float16
    assert 0.0 <= out["cubes"].min() and out["cubes"].max() <= 1.0
    assert set(out["labels"]) == {0, 1} and len(out["labels"]) == len(index.read_candidates())
    patches = extract_nodule_patches(index, size=16)
    assert patches["images"].shape == patches["masks"].shape == (len(ann), 16, 16, 16)
    assert (patches["masks"][:, 8, 8, 8] == 1).all()  # the nodule mask covers each annotation's centre
    # nodule centres are denser than aerated lung (about 0.07 after the window) ...
    nodule_centre = patches["images"][:, 8, 8, 8].astype(np.float32)
    assert (nodule_centre > 0.15).all()
    # ... and than the centres of cubes at random lung points
    by_uid = sorted(synth_root[1], key=lambda s: s.seriesuid)  # extraction walks scans in seriesuid order
    lung_points = pd.concat([s.candidates for s in by_uid])["kind"].to_numpy() == "lung"
    lung_centre = out["cubes"][lung_points][:, 8, 8, 8].astype(np.float32)
    assert nodule_centre.mean() > np.median(lung_centre) + 0.1
    with pytest.raises(FileNotFoundError, match="nodule_masks"):
        (root / "synth" / "nodule_masks" / f"{ann.seriesuid[0]}.mhd").rename(root / "moved.mhd")
        extract_nodule_patches(index, size=16)
