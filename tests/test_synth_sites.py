"""The Ark sites: each SynthCXR site written in a different real layout, read back by that dataset's loader, and
cached row-aligned with the CXR cache; label policies, reader aggregation, MONOCHROME1 inversion, validation."""

from __future__ import annotations

import copy
import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from eden_lib.config import ConfigError, load_params
from eden_lib.data import open_dataset, prepared
from eden_lib.data.chestxray14 import DATA_ENTRY, DATA_ENTRY_HEADER
from eden_lib.data.chexpert import CHEXPERT14
from eden_lib.data.mimic_cxr import MIMIC14
from eden_lib.data.synth_cxr import MASKS, SITES
from eden_lib.data.synth_sites import FORMATS, MIMIC_PATIENTS, check_sites, dicom_id, prepare_sites, site_targets
from eden_lib.data.vindr_cxr import VINDR_LABELS

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
NOISY = {  # knobs high enough that a few dozen images show every convention
    "data.sites.hospital_a.synthetic.label_noise": 0.2,
    "data.sites.icu_b.synthetic.uncertain_positive": 0.5,
    "data.sites.icu_b.synthetic.uncertain_negative": 0.2,
    "data.sites.icu_b.synthetic.not_mentioned": 0.5,
    "data.sites.clinic_c.synthetic.uncertain_positive": 0.5,
    "data.sites.clinic_c.synthetic.uncertain_negative": 0.2,
    "data.sites.screening_d.synthetic.reader_disagreement": 0.2,
}


def tiny_cfg(**overrides) -> dict:
    base = {"data.cxr.n_patients": 60, "data.cxr.render_size": SIZE, **NOISY}
    return load_params(ROOT / "params.yaml", overrides={**base, **overrides}, validate_methods=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny SynthCXR prepared as in ``prepare``: the CXR cache, then the sites (files and cache)."""
    from eden_lib.pipeline.prepare import _cxr_root, prepare_cxr

    cfg = tiny_cfg()
    root = tmp_path_factory.mktemp("sites_study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDEN_ROOT", str(root))
        prepare_cxr(cfg, _cxr_root(cfg))
        summary = prepare_sites(cfg)
        cxr, sites = prepared.load_cxr(), prepared.load_sites()
    specs = {s.name: s for s in check_sites(cfg)}
    return {"cfg": cfg, "raw": root / "data" / "raw" / "synthetic" / "sites", "cxr": cxr, "sites": sites,
            "specs": specs, "summary": summary}


def folder(study, site: str) -> Path:
    return study["raw"] / site / FORMATS[study["specs"][site].dataset].folder


def rows(study, site: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The site's rows: ``(labels (n, K), cache rows of the CXR cache (n,), sites meta)``."""
    s = study["sites"]
    idx = np.flatnonzero(s.meta["site"] == site)
    k = len(s.info["sites"][s.site_names.index(site)]["labels"])
    cxr_rows = pd.Series(np.arange(len(study["cxr"].meta)), index=study["cxr"].meta["image_index"])
    return s.labels[idx, :k], cxr_rows[s.meta["image_index"].iloc[idx]].to_numpy(), s.meta.iloc[idx]


def clean(study, site: str) -> np.ndarray:
    """The intended site labels: the mapping of the CXR cache's clean findings, uint8 ``(n, K)``."""
    _, cxr_rows, _ = rows(study, site)
    cxr = study["cxr"]
    return site_targets(cxr.labels[cxr_rows], cxr.info["labels"], study["specs"][site])


def test_each_site_is_written_in_its_own_real_format(study):
    nih = folder(study, "hospital_a")
    assert (nih / DATA_ENTRY).read_text().splitlines()[0] == DATA_ENTRY_HEADER
    with Image.open(next((nih / "images").glob("*.png"))) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (SIZE, SIZE))

    chexpert = folder(study, "icu_b")
    header = (chexpert / "train.csv").read_text().splitlines()[0].split(",")
    assert header == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT14]
    train = pd.read_csv(chexpert / "train.csv")
    assert train["Path"].str.fullmatch(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view1_frontal\.jpg").all()
    assert set(train["Sex"]) == {"Male", "Female"}
    valid = pd.read_csv(chexpert / "valid.csv")
    assert set(np.unique(valid[list(CHEXPERT14)].to_numpy())) <= {0.0, 1.0}  # consensus: no -1, no blank
    with Image.open(chexpert / train["Path"].iloc[0].split("/", 1)[1]) as im:
        assert im.format == "JPEG" and im.mode == "L"

    mimic = folder(study, "clinic_c")
    with gzip.open(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as fh:
        assert fh.readline().strip().split(",") == ["subject_id", "study_id", *MIMIC14]
    split = pd.read_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert split["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    jpgs = sorted(p.relative_to(mimic).as_posix() for p in (mimic / "files").rglob("*.jpg"))
    assert len(jpgs) == len(split) and all(re.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f-]{44}\.jpg", p)
                                           for p in jpgs)
    assert "sex" not in pd.read_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz").columns.str.lower()
    patients = pd.read_csv(study["raw"] / "clinic_c" / MIMIC_PATIENTS)
    assert list(patients.columns[:3]) == ["subject_id", "gender", "anchor_age"]

    vindr = folder(study, "screening_d")
    labels = pd.read_csv(vindr / "annotations" / "image_labels_train.csv")
    assert list(labels.columns) == ["image_id", "rad_id", *VINDR_LABELS]
    assert (labels.groupby("image_id").size() == 3).all() and labels["image_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    test = pd.read_csv(vindr / "annotations" / "image_labels_test.csv")
    assert list(test.columns) == ["image_id", *VINDR_LABELS] and test["image_id"].is_unique
    ds = pydicom.dcmread(next((vindr / "train").glob("*.dicom")))
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.Rows) == ("MONOCHROME1", 12, SIZE)


def test_every_site_reads_back_through_its_own_loader(study):
    cxr_sites = study["cxr"].meta["site"].value_counts()
    for name, spec in study["specs"].items():
        n = sum(len(open_dataset(spec.dataset, folder(study, name), split, labels=list(spec.labels),
                                 **spec.loader,
                                 **({"patients": study["raw"] / name / MIMIC_PATIENTS}
                                    if spec.dataset == "mimic_cxr" else {})))
                for split in dict.fromkeys(FORMATS[spec.dataset].splits.values()))
        assert n == cxr_sites[name] == (study["sites"].meta["site"] == name).sum() > 0
    assert [s["dataset"] for s in study["sites"].info["sites"]] == ["chestxray14", "chexpert", "mimic_cxr",
                                                                    "vindr_cxr"]


def test_rows_align_with_the_cxr_cache(study):
    sites, cxr = study["sites"], study["cxr"]
    assert sites.images.shape == (len(cxr.meta), SIZE, SIZE) and sites.images.dtype == np.uint8
    assert sorted(sites.meta["image_index"]) == sorted(cxr.meta["image_index"])
    joined = sites.meta.merge(cxr.meta, on="image_index", suffixes=("", "_cxr"), validate="one_to_one")
    for column in ("patient_id", "sex", "site", "split"):
        assert (joined[column] == joined[f"{column}_cxr"]).all(), column
    k = [len(s["labels"]) for s in sites.info["sites"]]
    for i, name in enumerate(sites.site_names):  # NaN padding past each site's own labels
        assert np.isnan(sites.labels[sites.meta["site"] == name, k[i]:]).all()


def test_mimic_sex_comes_from_the_patients_join(study):
    spec = study["specs"]["clinic_c"]
    ds = open_dataset("mimic_cxr", folder(study, "clinic_c"), "train", labels=list(spec.labels))
    assert set(ds.meta["sex"].map(type)) == {type(None)}  # not in MIMIC-CXR-JPG itself
    _, cxr_rows, meta = rows(study, "clinic_c")
    assert (meta["sex"].to_numpy() == study["cxr"].meta["sex"].to_numpy()[cxr_rows]).all()


def test_images_equal_the_source_pixels(study):
    sites, cxr = study["sites"], study["cxr"]
    for name in sites.site_names:
        _, cxr_rows, meta = rows(study, name)
        source = cxr.images[cxr_rows].astype(int)
        if SITES[name].invert:
            source = 255 - source
        diff = np.abs(sites.images[meta.index].astype(int) - source)
        lossless = study["specs"][name].dataset in ("chestxray14", "vindr_cxr")  # PNG, 12-bit DICOM; else JPEG
        assert diff.max() <= (1 if lossless else 40) and diff.mean() < (0.6 if lossless else 2.0), name


def test_vindr_monochrome1_comes_back_with_bright_bone(study):
    assert SITES["screening_d"].invert
    _, cxr_rows, meta = rows(study, "screening_d")
    masks = study["cxr"].masks[cxr_rows]
    bit = lambda name: (masks & (1 << MASKS.index(name))) > 0
    bone = bit("left_clavicle") | bit("right_clavicle")
    lung = (bit("left_lung") | bit("right_lung")) & ~bone
    shown, stored = study["sites"].images[meta.index].astype(float), study["cxr"].images[cxr_rows].astype(float)
    assert shown[bone].mean() > shown[lung].mean() + 20  # read back: bright bone, dark lungs
    assert stored[bone].mean() < stored[lung].mean() - 20  # the site itself stores inverted polarity


def test_chestxray14_labels_are_the_noisy_text_mined_cells(study):
    labels, _, meta = rows(study, "hospital_a")
    entry = pd.read_csv(folder(study, "hospital_a") / DATA_ENTRY).set_index("Image Index")
    cells = entry.loc[meta["image_index"], "Finding Labels"].str.split("|")
    names = list(study["specs"]["hospital_a"].labels)
    assert np.array_equal(labels, np.array([[name in c for name in names] for c in cells], np.float32))
    flipped = (labels != clean(study, "hospital_a")).mean()
    assert 0.05 < flipped < 0.4  # label_noise 0.2


def test_chexpert_uncertain_cells_are_nan_under_u_ignore(study):
    labels, _, meta = rows(study, "icu_b")
    spec, root = study["specs"]["icu_b"], folder(study, "icu_b")
    assert spec.loader["policy"] == "ignore"
    table = pd.concat([pd.read_csv(root / f) for f in ("train.csv", "valid.csv")]).set_index("Path")
    paths = [f"CheXpert-v1.0-small/{'valid' if s == 'test' else 'train'}/patient{p:05d}/study1/view1_frontal.jpg"
             for s, p in zip(meta["split"], meta["patient_id"])]
    states = table.loc[paths, list(spec.labels)].to_numpy()
    uncertain = states == -1
    assert uncertain.any() and np.isnan(states).any()  # both conventions present
    assert np.array_equal(np.isnan(labels), uncertain)
    assert np.array_equal(labels[~uncertain], clean(study, "icu_b")[~uncertain])  # blank -> 0, as the truth
    ones = open_dataset("chexpert", root, "train", labels=list(spec.labels), policy="ones")
    train = (meta["split"] != "test").to_numpy()
    got = ones.targets[pd.Series(np.arange(len(ones.meta)), index=ones.meta["path"])[np.array(paths)[train]]]
    assert np.array_equal(got, np.where(uncertain[train], 1.0, clean(study, "icu_b")[train]))


def test_mimic_uncertain_cells_are_one_under_u_ones(study):
    labels, _, meta = rows(study, "clinic_c")
    spec, root = study["specs"]["clinic_c"], folder(study, "clinic_c")
    assert spec.loader["policy"] == "ones"
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz").set_index("dicom_id")
    studies = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id")
    states = studies.loc[split.loc[[dicom_id(x) for x in meta["image_index"]], "study_id"], list(spec.labels)]
    uncertain = states.to_numpy() == -1
    assert uncertain.any() and not np.isnan(labels).any()
    assert np.array_equal(labels, np.where(uncertain, 1.0, clean(study, "clinic_c")))


def test_vindr_labels_follow_the_any_reader_rule(study):
    labels, _, meta = rows(study, "screening_d")
    spec, root = study["specs"]["screening_d"], folder(study, "screening_d")
    readers = pd.read_csv(root / "annotations" / "image_labels_train.csv")
    voted = readers.groupby("image_id")[list(spec.labels)].max()
    consensus = pd.read_csv(root / "annotations" / "image_labels_test.csv").set_index("image_id")[list(spec.labels)]
    ids = [hashlib.md5(x.encode()).hexdigest() for x in meta["image_index"]]
    expected = pd.concat([voted, consensus]).loc[ids].to_numpy()
    assert np.array_equal(labels, expected)
    test = (meta["split"] == "test").to_numpy()
    truth = clean(study, "screening_d")
    assert np.array_equal(labels[test], truth[test])
    per_reader = readers[list(spec.labels)].to_numpy() != np.repeat(truth[~test], 3, axis=0)
    assert 0.05 < per_reader.mean() < 0.4  # reader_disagreement 0.2 (rows of one image are consecutive)


def test_summary_counts_every_site(study):
    summary = study["summary"].set_index("dataset")
    for name in study["specs"]:
        counts = study["sites"].meta.loc[study["sites"].meta["site"] == name, "split"].value_counts()
        assert summary.loc[f"sites/{name}", "n_train"] == counts.get("train", 0)


def test_real_mode_reads_the_dataset_roots(study, tmp_path, monkeypatch):
    roots = {study["specs"][n].dataset: str(folder(study, n)) for n in ("icu_b", "screening_d")}
    cfg = copy.deepcopy(study["cfg"])
    cfg["data"]["source"] = "real"
    cfg["data"]["roots"].update(roots)
    cfg["data"]["sites"] = {"chexpert_site": cfg["data"]["sites"]["icu_b"],
                            "vindr_site": cfg["data"]["sites"]["screening_d"]}
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    prepare_sites(cfg)
    sites = prepared.load_sites()
    assert sites.site_names == ["chexpert_site", "vindr_site"] and sites.info["source"] == "real"
    chexpert = sites.meta[sites.meta["site"] == "chexpert_site"]
    assert chexpert["image_index"].str.startswith("CheXpert-v1.0-small/").all()
    n_valid = len(pd.read_csv(folder(study, "icu_b") / "valid.csv"))
    assert (chexpert["split"] == "test").sum() == n_valid and (chexpert["split"] == "val").any()
    cfg["data"]["roots"]["chexpert"] = None
    with pytest.raises(FileNotFoundError, match=r"data\.roots\.chexpert = None"):
        prepare_sites(cfg)


@pytest.mark.parametrize("edit, key", [
    (lambda s: s["icu_b"].update(dataset="nih"), r"data\.sites\.icu_b\.dataset"),
    (lambda s: s["icu_b"]["labels"].update({"Lung Lesion": ["Nodule", "Tumour"]}),
     r"data\.sites\.icu_b\.labels\.Lung Lesion"),
    (lambda s: s["icu_b"]["labels"].update(Effusion="Effusion"), r"data\.sites\.icu_b\.labels.*'Effusion'.*chexpert"),
    (lambda s: s["screening_d"]["labels"].update({"No finding": "Mass"}), r"data\.sites\.screening_d\.labels.*'No finding'"),
    (lambda s: s["icu_b"].update(extra=1), r"data\.sites\.icu_b\.extra"),
    (lambda s: s["icu_b"]["loader"].update(polcy="ones"), r"data\.sites\.icu_b\.loader\.polcy"),
    (lambda s: s["screening_d"]["synthetic"].update(readers=0), r"data\.sites\.screening_d\.synthetic\.readers"),
    (lambda s: s["hospital_a"]["synthetic"].pop("label_noise"), r"data\.sites\.hospital_a\.synthetic\.label_noise"),
    (lambda s: s.update(ward_x=copy.deepcopy(s["icu_b"])), r"data\.sites\.ward_x"),
])
def test_bad_sites_block_names_the_key(raw_params, write_params, edit, key):
    edit(raw_params["data"]["sites"])
    with pytest.raises(ConfigError, match=key):
        load_params(write_params(raw_params), validate_methods=False)


def test_default_sites_use_four_formats_with_different_label_sets():
    specs = check_sites(load_params(ROOT / "params.yaml", validate_methods=False))
    assert len({s.dataset for s in specs}) == len(specs) == 4
    assert len({tuple(s.labels) for s in specs}) == 4 and {s.name for s in specs} == set(SITES)
