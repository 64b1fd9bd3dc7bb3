"""SynthCTPA: CAD-PE layout read back by the real loader, emboli as filling defects inside contrast-filled arteries,
configured counts, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from eden_lib.data.cad_pe import CADPE
from eden_lib.data.synth_ctpa import SynthCTPAConfig, generate_synth_ctpa, synth_ctpa_scan, write_cad_pe

CFG = SynthCTPAConfig(n_train=3, n_test=2, emboli_per_scan=(2, 3), pe_free_fraction=0.4)


@pytest.fixture(scope="module")
def scans():
    return generate_synth_ctpa(CFG, seed=3)


@pytest.fixture(scope="module")
def root(scans, tmp_path_factory):
    return write_cad_pe(scans, tmp_path_factory.mktemp("ctpa") / "synthetic_ctpa")


def test_files_in_cad_pe_layout_read_back_by_the_loader(scans, root):
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{i}.nrrd" for i in ("001", "002", "003", "021", "022")]
        + [f"{i}RefStd.nrrd" for i in ("001", "002", "003", "021", "022")])
    train, test = CADPE(root, "train"), CADPE(root, "test")
    assert train.meta["patient_id"].tolist() == ["001", "002", "003"]
    assert test.meta["patient_id"].tolist() == ["021", "022"]
    for data in (train, test):
        for i, scan_id in enumerate(data.meta["patient_id"]):
            scan = next(s for s in scans if s.scan_id == scan_id)
            hu, emboli, geometry = data.read(i)
            assert hu.shape == emboli.shape == tuple(CFG.shape)  # (X, Y, Z) in file order
            np.testing.assert_array_equal(hu, scan.hu.transpose(2, 1, 0))
            np.testing.assert_array_equal(emboli, scan.emboli.transpose(2, 1, 0))
            np.testing.assert_allclose(geometry.spacing, CFG.spacing)
            np.testing.assert_allclose(geometry.origin, scan.origin)
            assert data[i]["n_emboli"] == len(scan.table)


def test_emboli_lie_in_contrast_filled_arteries_and_are_darker(scans):
    checked = 0
    for scan in scans:
        assert scan.contrast_hu >= CFG.contrast_hu[0]
        assert scan.lumen[scan.emboli > 0].all(), scan.scan_id
        for label in scan.table["label"]:
            clot = scan.emboli == label
            around = ndimage.binary_dilation(clot, iterations=3) & scan.lumen & (scan.emboli == 0)
            assert around.sum() >= 3, (scan.scan_id, label)
            assert np.median(scan.hu[clot]) < np.median(scan.hu[around]) - 50, (scan.scan_id, label)
            checked += 1
    # contrast is bright away from the clots: the lumen core well above the clot HU range
    lumen_hu = np.concatenate([s.hu[s.lumen & (s.emboli == 0)] for s in scans])
    assert np.percentile(lumen_hu, 90) > 200
    assert checked >= 5


def test_counts_as_configured(scans):
    counts = [len(s.table) for s in scans]
    assert all(c == 0 or CFG.emboli_per_scan[0] <= c <= CFG.emboli_per_scan[1] for c in counts), counts
    for scan in scans:
        labels = np.unique(scan.emboli[scan.emboli > 0])
        np.testing.assert_array_equal(labels, np.arange(1, len(scan.table) + 1))
        np.testing.assert_array_equal(scan.table["n_voxels"], [np.sum(scan.emboli == k) for k in labels])
    assert 0 in counts and max(counts) > 0  # some PE-free scans, not all (seed 3)
    exact = synth_ctpa_scan(SynthCTPAConfig(pe_free_fraction=0.0, emboli_per_scan=(4, 4)), 0, 0)
    assert len(exact.table) == 4 and exact.emboli.max() == 4


def test_seeded_determinism(scans):
    again = synth_ctpa_scan(CFG, 3, 1)
    np.testing.assert_array_equal(again.hu, scans[1].hu)
    np.testing.assert_array_equal(again.emboli, scans[1].emboli)
    other = synth_ctpa_scan(CFG, 4, 1)
    assert not np.array_equal(other.hu, scans[1].hu)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="n_train"):
        SynthCTPAConfig(n_train=21)
    with pytest.raises(ValueError, match="embolus_hu"):
        SynthCTPAConfig(embolus_hu=(30.0, 300.0))
