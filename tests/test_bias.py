import numpy as np
import pytest

from eden_lib.analysis.bias import TRAIN_SETS, _training_sets, bias_study


def _cohort(seed: int, n: int = 800, d: int = 8, k: int = 3, female_label_noise: float = 0.0):
    """Features and findings independent of sex; optionally flip a fraction of the female labels."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    y = (x @ g.normal(size=(d, k)) / np.sqrt(d) + 0.7 * g.normal(size=(n, k)) > 0.4).astype(float)
    sex = np.where(g.random(n) < 0.5, "M", "F")
    flip = (sex == "F")[:, None] & (g.random((n, k)) < female_label_noise)
    y[flip] = 1 - y[flip]
    return x, y, sex, np.arange(n // 2), np.arange(n // 2, n)


def test_output_layout_counts_and_prevalence():
    x, y, sex, train, test = _cohort(0)
    out = bias_study(x, y, sex, train, test, seed=0, n_boot=100, label_names=["effusion", "nodule", "mass"])
    assert len(out) == 3 * 4
    assert list(out["train_set"].unique()) == list(TRAIN_SETS)
    assert list(out["label"].iloc[:4]) == ["effusion", "nodule", "mass", "mean"]
    assert out["n_train"].nunique() == 1 and out["n_train"].iloc[0] == min((sex[train] == s).sum() for s in "MF")
    male_test = test[sex[test] == "M"]
    assert (out["n_test_male"] == male_test.size).all()
    assert out["n_pos_male"].iloc[0] == y[male_test, 0].sum()
    assert out["prevalence_male"].iloc[1] == pytest.approx(y[male_test, 1].mean())
    assert np.allclose(out["gap"], out["auc_male"] - out["auc_female"])
    assert (out["gap_ci_low"] <= out["gap_ci_high"]).all()


def test_training_sets_same_size_pure_and_balanced():
    sex = np.array(["M"] * 30 + ["F"] * 20)
    idx = np.arange(50)
    sets = _training_sets(idx[sex == "M"], idx[sex == "F"], 20, seed=0)
    assert {name: rows.size for name, rows in sets.items()} == {"male": 20, "female": 20, "balanced": 20}
    assert (sex[sets["male"]] == "M").all() and (sex[sets["female"]] == "F").all()
    assert (sex[sets["balanced"]] == "M").sum() == 10 and np.unique(sets["balanced"]).size == 20


def test_ci_covers_zero_without_a_sex_effect():
    covered = []
    for rep in range(12):
        x, y, sex, train, test = _cohort(100 + rep)
        out = bias_study(x, y, sex, train, test, seed=rep, n_boot=300)
        covered += list((out["gap_ci_low"] <= 0) & (out["gap_ci_high"] >= 0))
    assert np.mean(covered) >= 0.8  # nominal 0.95; well above what a biased procedure would give


def test_ci_excludes_zero_when_female_labels_are_noisier():
    x, y, sex, train, test = _cohort(7, n=1200, female_label_noise=0.25)
    out = bias_study(x, y, sex, train, test, seed=0, n_boot=300).set_index(["train_set", "label"])
    for train_set in TRAIN_SETS:
        row = out.loc[(train_set, "mean")]
        assert row["gap"] > 0 and row["gap_ci_low"] > 0


def test_deterministic_per_seed():
    x, y, sex, train, test = _cohort(1)
    a = bias_study(x, y, sex, train, test, seed=3, n_boot=100)
    b = bias_study(x, y, sex, train, test, seed=3, n_boot=100)
    assert a.equals(b)
    assert not a.equals(bias_study(x, y, sex, train, test, seed=4, n_boot=100))


def test_one_class_test_label_is_nan_with_note_not_an_error():
    x, y, sex, train, test = _cohort(2)
    y[test[sex[test] == "F"], 2] = 0.0
    out = bias_study(x, y, sex, train, test, seed=0, n_boot=50)
    rows = out[out["label"] == "2"]
    assert rows["auc_female"].isna().all() and (rows["note"] == "one class in female test").all()
    assert out.loc[out["label"] == "mean", "gap"].notna().all()


def test_bad_inputs_raise():
    x, y, sex, train, test = _cohort(3)
    bad = sex.astype(object)
    bad[test[0]] = "Unknown"
    with pytest.raises(ValueError, match="'Unknown'"):
        bias_study(x, y, bad, train, test, seed=0)
    with pytest.raises(ValueError, match="overlap"):
        bias_study(x, y, sex, train, np.append(test, train[0]), seed=0)
    with pytest.raises(ValueError, match="n_train_per_sex=10000"):
        bias_study(x, y, sex, train, test, seed=0, n_train_per_sex=10_000)
