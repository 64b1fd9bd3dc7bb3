"""Shared 3D readers: DICOM series geometry (non-axial, shuffled), NIfTI groups, ages, error messages."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from eden_lib.data.ct3d import parse_age, read_dicom_series, read_nifti_group, write_ct_slice
from eden_lib.data.luna16 import voxel_to_world, world_to_voxel

IOP = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # coronal: rows along +x, columns down -z, normal +y
PIXEL_SPACING = (0.8, 0.5)  # [row spacing, column spacing]


def _coronal(tmp_path, hu: np.ndarray) -> list:
    files = []
    for k in (2, 0, 3, 1):  # file order unrelated to position
        path = tmp_path / f"slice{len(files)}.dcm"
        write_ct_slice(path, hu[:, :, k].T.copy(), position=(10.0, -20.0 + 1.5 * k, 50.0), orientation=IOP,
                       pixel_spacing=PIXEL_SPACING, sop_uid=f"1.2.{k}", series_uid="1.2", study_uid="1.3",
                       instance_number=k + 1, intercept=-1024.0)
        files.append(path)
    return files


def test_non_axial_series_geometry_matches_the_dicom_definition(tmp_path):
    hu = np.random.default_rng(0).integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    series = read_dicom_series(_coronal(tmp_path, hu + 1024))
    np.testing.assert_array_equal(series.hu, hu.astype(np.float32))
    assert series.sop_uids == ["1.2.0", "1.2.1", "1.2.2", "1.2.3"]
    g = series.geometry
    np.testing.assert_allclose(g.spacing, (0.5, 0.8, 1.5))
    np.testing.assert_allclose(g.direction, [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 2)]:
        # DICOM: P = IPP_k + i * col_spacing * row_dir + j * row_spacing * col_dir
        expected = np.array([10.0, -20.0 + 1.5 * k, 50.0]) + i * 0.5 * np.array(IOP[:3]) + j * 0.8 * np.array(IOP[3:])
        np.testing.assert_allclose(voxel_to_world(np.array([k, j, i]), g.origin, g.spacing, g.direction), expected)
        np.testing.assert_allclose(world_to_voxel(expected, g.origin, g.spacing, g.direction), [k, j, i], atol=1e-9)


def test_series_errors_name_the_file(tmp_path):
    hu = np.zeros((6, 5, 4), np.int16)
    files = _coronal(tmp_path, hu)
    files[1].write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="slice1.dcm: not a readable DICOM"):
        read_dicom_series(files)
    write_ct_slice(files[1], hu[:, :, 0].T.copy(), position=(10.0, -20.0, 50.0), sop_uid="1.2.9", series_uid="1.2",
                   study_uid="1.3")  # axial orientation in a coronal series
    with pytest.raises(ValueError, match="slice1.dcm: ImageOrientationPatient differs"):
        read_dicom_series(files)
    files = _coronal(tmp_path, hu)
    write_ct_slice(files[0], hu[:4, :, 0].T.copy(), position=(10.0, -17.0, 50.0), orientation=IOP,
                   pixel_spacing=PIXEL_SPACING, sop_uid="1.2.9", series_uid="1.2", study_uid="1.3")
    with pytest.raises(ValueError, match=r"slice0.dcm: slice of \(5, 4\) pixels, expected \(5, 6\)"):
        read_dicom_series(files)
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        read_dicom_series([tmp_path / "nope.dcm"])


def test_nifti_group_orientation_and_errors(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    affine = np.array([[0, 2.0, 0, 5], [-1.5, 0, 0, 6], [0, 0, 3.0, 7], [0, 0, 0, 1]])  # i -> P, j -> R
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "a.nii"))
    (out,), g = read_nifti_group([tmp_path / "a.nii"], "LPS")
    np.testing.assert_array_equal(out, data.transpose(1, 0, 2)[::-1])  # j -> L flipped, i -> P kept
    np.testing.assert_allclose(g.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(g.spacing, (2.0, 1.5, 3.0))
    for i, j, k in [(0, 0, 0), (2, 1, 3)]:  # the same voxel maps to the same LPS point before and after
        before = np.diag([-1, -1, 1]) @ (affine @ [j, out.shape[0] - 1 - i, k, 1])[:3]
        np.testing.assert_allclose(g.origin + g.direction @ (np.array([i, j, k]) * g.spacing), before)
    with pytest.raises(ValueError, match="orientation"):
        read_nifti_group([tmp_path / "a.nii"], "LPL")
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.int16), np.eye(4)), str(tmp_path / "b.nii"))
    with pytest.raises(ValueError, match=r"b.nii: expected a 3D volume"):
        read_nifti_group([tmp_path / "b.nii"])
    with pytest.raises(FileNotFoundError, match="c.nii"):
        read_nifti_group([tmp_path / "c.nii"])


@pytest.mark.parametrize("value, years", [("045Y", 45), ("018M", 1), ("003W", 0), ("400D", 1), ("63", 63),
                                          (60.463, 60), ("", None), (None, None), ("unknown", None),
                                          (float("nan"), None)])
def test_parse_age(value, years):
    assert parse_age(value) == years
