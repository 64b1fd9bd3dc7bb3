import numpy as np
import pandas as pd
import pytest

from eden_lib.analysis.bias import (
    MMO,
    TRAIN_SETS,
    _training_sets,
    bias_study,
    bias_study_with_replicates,
    pool_seeds,
)
from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
from eden_lib.evaluation.statistics import bootstrap_p
from eden_lib.evaluation.metrics import bootstrap_counts, rank_auc
from eden_lib.seed import rng


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


# --- Ark's matched-minus-opposite test ---------------------------------------------------------------------------


def _sex_specific_cohort(seed: int, n: int = 800, k: int = 2):
    """Findings driven by feature 0 in men and by feature 1 in women: a probe trained on one sex cannot use the
    other sex's feature, so it is near chance on the other sex."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 4))
    sex = np.where(g.random(n) < 0.5, "M", "F")
    signal = np.where(sex == "M", x[:, 0], x[:, 1])[:, None]
    y = (signal + 0.5 * g.normal(size=(n, k)) > 0.3).astype(float)
    return x, y, sex, np.arange(n // 2), np.arange(n // 2, n)


def test_sex_specific_feature_gives_a_significant_positive_matched_minus_opposite():
    x, y, sex, train, test = _sex_specific_cohort(0)
    runs = [bias_study_with_replicates(x, y, sex, train, test, seed=s, n_boot=200) for s in range(2)]
    table = runs[0][0].set_index(["train_set", "label"])
    for word in ("male", "female"):
        row = table.loc[(word, "mean")]
        assert row[MMO] > 0.2 and row[f"{MMO}_ci_low"] > 0 and row[f"{MMO}_p"] < 0.02
    assert table.loc["balanced", MMO].isna().all() and table.loc["balanced", f"{MMO}_p"].isna().all()
    pooled = pool_seeds([t for t, _ in runs], [r for _, r in runs])
    findings = pooled[pooled["label"] != "mean"]
    assert findings["significant"].all() and (findings["diff"] > 0.2).all()


def test_no_sex_effect_pooled_p_values_are_not_small_beyond_the_nominal_rate():
    p = []
    for rep in range(10):
        x, y, sex, train, test = _cohort(300 + rep)
        runs = [bias_study_with_replicates(x, y, sex, train, test, seed=10 * rep + s, n_boot=200) for s in range(3)]
        pooled = pool_seeds([t for t, _ in runs], [r for _, r in runs])
        p += list(pooled.loc[pooled["label"] != "mean", "p"])
    p = np.asarray(p)
    assert p.size == 10 * 2 * 3
    assert np.mean(p < 0.05) <= 0.15  # nominal 0.05 (measured about 0.07 with seeds sharing most training rows)
    assert 0.35 <= p.mean() <= 0.75  # about uniform; a one-tailed p (no factor 2) would average about 0.25


def test_bootstrap_p_by_hand():
    reps = np.array([[-0.1, 0.1, 0.0, np.nan],
                     [0.2, 0.2, 0.0, np.nan],
                     [0.3, 0.3, 1.0, np.nan],
                     [0.4, 0.4, np.nan, np.nan],
                     [np.nan, 0.5, np.nan, np.nan]])
    # col 0: 4 finite, 1 <= 0 -> 2 * 2 / 5; col 1: 5 finite, none <= 0 -> 2 * 1 / 6;
    # col 2: ties at 0 count in both tails: min(2, 3) + 1 = 3 -> 2 * 3 / 4 > 1 -> 1; col 3: no replicate -> NaN
    got = bootstrap_p(reps)
    assert got[:3] == pytest.approx([0.8, 1 / 3, 1.0]) and np.isnan(got[3])


def test_matched_minus_opposite_is_paired_on_the_same_resampled_patients_by_hand():
    x, y, sex, train, test = _cohort(5, n=240, k=2)
    seed, n_boot = 2, 6
    table, reps = bias_study_with_replicates(x, y, sex, train, test, seed=seed, n_boot=n_boot)
    n = min((sex[train] == s).sum() for s in "MF")
    sets = _training_sets(train[sex[train] == "M"], train[sex[train] == "F"], n, seed)
    male_test = test[sex[test] == "M"]
    score = {ts: fit_predict_linear_probe(x[sets[ts]], y[sets[ts]], x[male_test]) for ts in ("male", "female")}
    counts = bootstrap_counts(male_test.size, n_boot, rng(seed, "bias_boot", "M"))
    for b in range(n_boot):
        rows = np.repeat(np.arange(male_test.size), counts[b])
        auc = {ts: rank_auc(y[male_test][rows].T, s[rows].T) for ts, s in score.items()}
        assert reps["male"][b, :2] == pytest.approx(auc["male"] - auc["female"])
        assert reps["male"][b, 2] == pytest.approx(np.mean(auc["male"] - auc["female"]))
    male = table[table["train_set"] == "male"].reset_index(drop=True)
    female_trained = table[table["train_set"] == "female"].reset_index(drop=True)
    assert np.allclose(male[MMO], male["auc_male"] - female_trained["auc_male"])
    lo, hi = np.percentile(reps["male"], [2.5, 97.5], axis=0)
    assert np.allclose(male[f"{MMO}_ci_low"], lo) and np.allclose(male[f"{MMO}_ci_high"], hi)
    assert np.allclose(male[f"{MMO}_p"], bootstrap_p(reps["male"]))


def _fake_seed(diffs: list[float], reps: list[list[float]]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A two-finding bias table and replicates; both test sexes get the same numbers."""
    rows = [{"train_set": ts, "label": lab, MMO: d} for ts in ("male", "female")
            for lab, d in zip(["a", "b", "mean"], diffs)]
    rows += [{"train_set": "balanced", "label": lab, MMO: np.nan} for lab in ("a", "b", "mean")]
    return pd.DataFrame(rows), {"male": np.array(reps), "female": np.array(reps)}


def test_pool_seeds_pools_replicates_and_holm_corrects_findings_by_hand():
    s0 = _fake_seed([0.1, 0.0, 0.05], [[0.1, -0.1, 0.0], [0.2, 0.1, 0.15], [0.3, -0.2, 0.05]])
    s1 = _fake_seed([0.3, 0.2, 0.25], [[0.2, 0.3, 0.25], [0.4, -0.1, 0.15], [0.5, 0.2, 0.35]])
    out = pool_seeds([s0[0], s1[0]], [s0[1], s1[1]], level=0.5).set_index(["test_sex", "label"])
    assert list(out.index.get_level_values(0).unique()) == ["female", "male"]
    a, b = out.loc[("male", "a")], out.loc[("male", "b")]
    assert a["diff"] == pytest.approx(0.2) and b["diff"] == pytest.approx(0.1)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(tuple(np.percentile([0.1, 0.2, 0.3, 0.2, 0.4, 0.5], [25, 75])))
    # finding a: 6 replicates all > 0 -> p = 2 / 7; b: 3 of 6 <= 0 -> p = 2 * 4 / 7 -> 1
    assert a["p"] == pytest.approx(2 / 7) and b["p"] == pytest.approx(1.0)
    # Holm over 4 tests (2 findings x 2 sexes): the two p = 2/7 are tied smallest -> 4 * 2/7 -> 1 (capped)
    assert a["p_holm"] == pytest.approx(1.0) and np.isnan(out.loc[("male", "mean"), "p_holm"])
    assert not out["significant"].any() and (out["n_seeds"] == 2).all()
    with pytest.raises(ValueError, match="2 tables and 1 replicate"):
        pool_seeds([s0[0], s1[0]], [s0[1]])


# --- figure and report -------------------------------------------------------------------------------------------


def test_bias_boxes_has_a_panel_per_test_sex_with_every_method(tmp_path):
    from eden_lib.reporting.figures import bias_boxes, save

    x, y, sex, train, test = _cohort(4, n=300)
    table = pd.concat([bias_study(x, y, sex, train, test, seed=s, n_boot=20).assign(method=m, seed=s)
                       for m in ("m1", "m2", "m3") for s in range(2)])
    fig = bias_boxes(table)
    top, bottom = fig.axes[:2]
    assert "female" in top.get_title() and "male" in bottom.get_title() and "female" not in bottom.get_title()
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["m1", "m2", "m3"]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["female", "male", "balanced"]
    assert save(fig, tmp_path / "bias.png").stat().st_size > 10_000


def test_report_section_lists_every_method_and_names_significant_findings(tmp_path, monkeypatch):
    from eden_lib import paths
    from eden_lib.pipeline.bias import _gap_summary, _mmo_summary
    from eden_lib.pipeline.report import bias_section
    from eden_lib.reporting.io import write_json

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    cohorts = {"biased": _sex_specific_cohort(1), "fair": _cohort(6), "also_fair": _cohort(7)}
    frames, mmo = [], {}
    for method, (x, y, sex, train, test) in cohorts.items():
        runs = [bias_study_with_replicates(x, y, sex, train, test, seed=s, n_boot=100,
                                           label_names=[f"finding{j}" for j in range(y.shape[1])]) for s in range(2)]
        mmo[method] = _mmo_summary(pool_seeds([t for t, _ in runs], [r for _, r in runs]))
        frames += [t.assign(method=method, seed=s) for s, (t, _) in enumerate(runs)]
    write_json({"sex_effect": 1.0, "summary": _gap_summary(pd.concat(frames)), "matched_minus_opposite": mmo,
                "alpha": 0.05, "n_seeds": 2, "n_bootstrap": 100, "left_out_3d_only": []}, paths.metrics_file("bias", "gender"))
    text = "\n".join(bias_section({"active_methods": ["fair", "biased", "also_fair", "not_run"]}))
    lines = text.splitlines()
    for method in ("fair", "biased", "also_fair"):
        assert sum(line.startswith(f"| {method} |") for line in lines) == 3 + 2  # gap table + significance table
        assert sum(line.startswith(f"- `{method}`:") for line in lines) == 1
    assert "not_run" not in text
    biased = next(line for line in lines if line.startswith("- `biased`:"))
    assert "matched-sex training better on female test patients for finding0" in biased and "finding1" in biased
    assert "| biased | female | 2 / 2 |" in text and "| biased | male | 2 / 2 |" in text
    assert "smallest attainable p is 0.01 " in text
