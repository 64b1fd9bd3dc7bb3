"""Models Genesis sub-volume sampling against a straightforward per-voxel reference of the official test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from eden_lib.data.subvolumes import (
    cube_tissue_scores,
    hu_to_unit,
    min_volume_shape,
    sample_subvolume_corners,
    sample_subvolumes,
    tissue_score_table,
)

CROP = (5, 4, 3)
BORDERS = {"border_xy": 2, "border_z": 1}


def _load_reference():
    spec = importlib.util.spec_from_file_location(
        "subvolume_reference", Path(__file__).resolve().parent.parent / "benchmarks" / "subvolume_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_loop_score


reference_score = _load_reference()


@pytest.fixture()
def volume() -> np.ndarray:
    g = np.random.default_rng(0)
    tissue = g.uniform(size=(14, 12, 11)) < 0.2
    return (tissue * 0.5 + g.uniform(0, 0.1, size=(14, 12, 11))).astype(np.float32)


def test_hu_to_unit():
    np.testing.assert_allclose(hu_to_unit(np.array([-2000, -1000, -150, 0, 1000, 3000])),
                               [0, 0, 0.425, 0.5, 1, 1])
    with pytest.raises(ValueError, match="window"):
        hu_to_unit(np.zeros(3), window=(100, -100))


@pytest.mark.parametrize("len_depth", [2, 3, 4])
def test_scores_match_per_voxel_reference_for_every_corner(volume, len_depth):
    table = tissue_score_table(volume, 0.425, len_depth)
    nx, ny, nz = volume.shape
    corners = np.array([(x, y, z) for x in range(nx - CROP[0] + 1) for y in range(ny - CROP[1] + 1)
                        for z in range(nz - CROP[2] - len_depth + 2)])
    got = cube_tissue_scores(table, corners, CROP, len_depth)
    want = [reference_score(volume, c, CROP, 0.425, len_depth) for c in corners]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.ptp(want) > 5  # the volume is varied enough for the comparison to mean something


def test_sampled_corners_pass_reference_test_in_official_ranges(volume):
    corners = sample_subvolume_corners(volume, 6, np.random.default_rng(1), crop=CROP, max_tissue_fraction=0.3,
                                       **BORDERS)
    assert 0 < len(corners) <= 6
    nx, ny, nz = volume.shape
    assert (corners[:, 0] >= 2).all() and (corners[:, 0] <= nx - CROP[0] - 1 - 2).all()
    assert (corners[:, 1] >= 2).all() and (corners[:, 1] <= ny - CROP[1] - 1 - 2).all()
    assert (corners[:, 2] >= 1).all() and (corners[:, 2] <= nz - CROP[2] - 3 - 1 - 1).all()
    for c in corners:
        assert reference_score(volume, c, CROP) <= 0.3 * np.prod(CROP)
    # rejected draws exist: the filter is doing something on this volume
    g = np.random.default_rng(1)
    draws = g.integers([2, 2, 1], [nx - CROP[0] - 2, ny - CROP[1] - 2, nz - CROP[2] - 4], size=(300, 3))
    assert any(reference_score(volume, c, CROP) > 0.3 * np.prod(CROP) for c in draws[:50])


def test_cubes_are_the_volume_at_the_corners_and_deterministic(volume):
    kwargs = dict(crop=CROP, max_tissue_fraction=0.3, **BORDERS)
    cubes = sample_subvolumes(volume, 6, np.random.default_rng(2), **kwargs)
    corners = sample_subvolume_corners(volume, 6, np.random.default_rng(2), **kwargs)
    assert cubes.shape == (len(corners), *CROP) and cubes.dtype == np.float32
    for cube, (x, y, z) in zip(cubes, corners):
        np.testing.assert_array_equal(cube, volume[x:x + CROP[0], y:y + CROP[1], z:z + CROP[2]])
    np.testing.assert_array_equal(cubes, sample_subvolumes(volume, 6, np.random.default_rng(2), **kwargs))


def test_all_tissue_volume_yields_no_cubes():
    cubes = sample_subvolumes(np.ones((14, 12, 11), np.float32), 4, np.random.default_rng(0), crop=CROP, **BORDERS)
    assert cubes.shape == (0, *CROP)


def test_too_small_volume_raises_with_needed_shape():
    assert min_volume_shape() == (265, 265, 96)  # official crop 64x64x32 with borders 100/30
    with pytest.raises(ValueError, match=r"\(96, 96, 64\).*expected at least \(265, 265, 96\)"):
        sample_subvolumes(np.zeros((96, 96, 64), np.float32), 32, np.random.default_rng(0))
