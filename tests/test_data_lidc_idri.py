"""LIDC-IDRI loader on a format-exact fixture: NBIA-style folders, CT slices and LidcReadMessage XML outlines."""

from __future__ import annotations

import numpy as np
import pytest

from eden_lib.data.ct3d import write_ct_slice
from eden_lib.data.lidc_idri import LIDCIDRI
from eden_lib.data.subvolumes import hu_to_unit

SHAPE = (16, 12, 5)  # X (columns), Y (rows), Z
Z0, DZ = -100.0, 2.5
SERIES = {"LIDC-IDRI-0001": "1.3.6.1.4.1.14519.5.2.1.6279.6001.1001",
          "LIDC-IDRI-0002": "1.3.6.1.4.1.14519.5.2.1.6279.6001.2001"}
STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.9"


def _sop(patient: str, k: int) -> str:
    return f"{SERIES[patient]}.{k}"


def _hu(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, SHAPE).astype(np.int16)


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _roi(z: float, sop: str, points, inclusion: bool = True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z:.6f}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def _nodule(nodule_id: str, rois: list[str], malignancy: int | None = None) -> str:
    chars = "" if malignancy is None else (
        "<characteristics><subtlety>5</subtlety><internalStructure>1</internalStructure><calcification>6"
        "</calcification><sphericity>3</sphericity><margin>3</margin><lobulation>3</lobulation><spiculation>4"
        f"</spiculation><texture>5</texture><malignancy>{malignancy}</malignancy></characteristics>")
    return f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"


def _xml(series: str, sessions: list[str]) -> str:
    body = "".join(f"<readingSession><annotationVersion>3.12</annotationVersion><servicingRadiologistID>anon"
                   f"</servicingRadiologistID>{s}</readingSession>" for s in sessions)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.5" '
            'xmlns="http://www.nih.gov" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<ResponseHeader><Version>1.8.1</Version><TaskDescription>Second unblinded read</TaskDescription>"
            f"<SeriesInstanceUid>{series}</SeriesInstanceUid><StudyInstanceUID>{STUDY}</StudyInstanceUID>"
            f"</ResponseHeader>{body}</LidcReadMessage>")


def _z(k: int) -> float:
    return Z0 + DZ * k


P1 = "LIDC-IDRI-0001"
READER0 = _nodule("Nodule 001", [_roi(_z(1), _sop(P1, 1), _rect(3, 2, 6, 4)),
                                 _roi(_z(2), _sop(P1, 2), _rect(2, 2, 8, 8)),
                                 _roi(_z(2), _sop(P1, 2), _rect(4, 4, 6, 6), inclusion=False)], malignancy=4)
READER1 = _nodule("IL057_1", [_roi(_z(1), "1.2.999.not.in.series", _rect(5, 3, 8, 5))], malignancy=2)  # by z
READER2 = _nodule("Nodule 007", [_roi(_z(3), _sop(P1, 3), [(10, 10)])])  # < 3 mm: one point, no ratings


def _write_patient(root, patient: str, seed: int, xml: str, folder: str = "01-01-2000-30178/3000566.000000-03192",
                   **tags) -> None:
    series = root / patient / folder
    hu = _hu(seed)
    for k in range(SHAPE[2]):
        write_ct_slice(series / f"1-{SHAPE[2] - k:03d}.dcm", hu[:, :, k].T.copy(), position=(-150.0, -160.0, _z(k)),
                       sop_uid=_sop(patient, k), series_uid=SERIES[patient], study_uid=STUDY, slope=1.0,
                       intercept=0.0, pixel_spacing=(0.7, 0.7), instance_number=SHAPE[2] - k, PatientID=patient,
                       **tags)
    (series / "069.xml").write_text(xml)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("LIDC-IDRI")
    _write_patient(root, P1, 0, _xml(SERIES[P1], [READER0, READER1, READER2]), PatientSex="M", PatientAge="065Y")
    none = "<nonNodule><nonNoduleID>1</nonNoduleID><imageZposition>-97.5</imageZposition></nonNodule>"
    _write_patient(root, "LIDC-IDRI-0002", 1, _xml(SERIES["LIDC-IDRI-0002"], [none]))
    cxr = root / P1 / "01-01-2000-35511" / "3000923.000000-62357"  # the patient's radiograph, skipped
    write_ct_slice(cxr / "1-1.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 0), sop_uid="1.9", series_uid="1.9.1",
                   study_uid="1.9.2", Modality="CR")
    (cxr / "071.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov"></IdriReadMessage>')
    return root


def _expected_count() -> np.ndarray:
    count = np.zeros(SHAPE, np.uint8)
    count[3:7, 2:5, 1] += 1                     # reader 0, slice 1
    ring = np.zeros(SHAPE[:2], np.uint8)
    ring[2:9, 2:9] = 1
    ring[4:7, 4:7] = 0                          # the inclusion FALSE hole
    count[:, :, 2] += ring
    count[5:9, 3:6, 1] += 1                     # reader 1, placed by imageZposition
    return count


def test_item_image_masks_and_header_fields(root):
    ds = LIDCIDRI(root)
    assert ds.meta["patient_id"].tolist() == [P1, "LIDC-IDRI-0002"]
    assert ds.meta[["n_readers", "n_nodule_reads", "n_small_reads"]].values.tolist() == [[3, 2, 1], [1, 0, 0]]
    item = ds[0]
    assert item["image"].shape == (1, *SHAPE)
    np.testing.assert_allclose(item["image"][0].numpy(), hu_to_unit(_hu(0)), atol=1e-6)
    np.testing.assert_array_equal(item["reader_count"].numpy(), _expected_count())
    np.testing.assert_array_equal(item["mask"].numpy(), _expected_count() >= 1)
    assert item["label"].tolist() == [1.0] and (item["sex"], item["age"]) == ("M", 65)
    assert item["series_uid"] == SERIES[P1]
    np.testing.assert_allclose(item["spacing"], (0.7, 0.7, DZ))
    np.testing.assert_allclose(item["origin"], (-150.0, -160.0, Z0))
    empty = ds[1]
    assert empty["label"].tolist() == [0.0] and empty["mask"].sum() == 0 and empty["sex"] is None
    assert empty["age"] is None


def test_min_readers_consensus(root):
    item = LIDCIDRI(root, min_readers=2)[0]
    np.testing.assert_array_equal(item["mask"].numpy(), _expected_count() >= 2)
    assert int(item["mask"].sum()) == 2 * 2 and item["label"].tolist() == [1.0]  # x 5-6, y 3-4 on slice 1
    assert LIDCIDRI(root, min_readers=3)[0]["label"].tolist() == [0.0]


def test_nodule_table(root):
    table = LIDCIDRI(root).nodules(0)
    assert table["reader"].tolist() == [0, 1, 2] and table["small"].tolist() == [False, False, True]
    assert table["nodule_id"].tolist() == ["Nodule 001", "IL057_1", "Nodule 007"]
    assert table["malignancy"].tolist()[:2] == [4, 2] and np.isnan(table["malignancy"].iloc[2])
    assert table["n_rois"].tolist() == [3, 1, 1] and table["z_min"].tolist() == [_z(1), _z(1), _z(3)]


def test_errors_name_the_file(tmp_path):
    lost = _nodule("x", [_roi(-1.0, "1.2.999", _rect(1, 1, 3, 3))])
    _write_patient(tmp_path / "a", P1, 0, _xml(SERIES[P1], [lost]))
    with pytest.raises(ValueError, match="069.xml: roi imageSOP_UID 1.2.999 is not in the series"):
        LIDCIDRI(tmp_path / "a")[0]
    _write_patient(tmp_path / "b", P1, 0, _xml(SERIES[P1], [READER0])[:-30])
    with pytest.raises(ValueError, match="069.xml: malformed XML"):
        LIDCIDRI(tmp_path / "b")
    _write_patient(tmp_path / "c", P1, 0, _xml("1.2.3", [READER0]))
    with pytest.raises(ValueError, match="069.xml: SeriesInstanceUid 1.2.3 differs"):
        LIDCIDRI(tmp_path / "c")
    bad = READER0.replace("<xCoord>3</xCoord>", "<xCoord>three</xCoord>", 1)
    _write_patient(tmp_path / "d", P1, 0, _xml(SERIES[P1], [bad]))
    with pytest.raises(ValueError, match="069.xml: reader 0 nodule 'Nodule 001' <xCoord> has 'three'"):
        LIDCIDRI(tmp_path / "d")
    _write_patient(tmp_path / "e", P1, 0, _xml(SERIES[P1], []))
    next((tmp_path / "e").rglob("069.xml")).unlink()
    with pytest.raises(ValueError, match="03192: expected one LidcReadMessage XML"):
        LIDCIDRI(tmp_path / "e")
    with pytest.raises(ValueError, match="no official split"):
        LIDCIDRI(tmp_path / "e", split="train")
    with pytest.raises(ValueError, match="min_readers"):
        LIDCIDRI(tmp_path / "e", min_readers=5)
