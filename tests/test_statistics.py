import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from eden_lib.evaluation.statistics import (
    benjamini_hochberg,
    best_method,
    compare_methods,
    holm,
    paired_t,
    percentile_ci,
    stars,
    summarize,
    unpaired_t,
)


def test_holm_hand_worked():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(1*0.04, 0.06)=0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_benjamini_hochberg_hand_worked():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.02, 0.04, 0.04 (step-up minimum from the largest)
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(benjamini_hochberg([0.04, 0.01]), [0.04, 0.02])


def test_corrections_keep_nan_out_of_the_family():
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert np.isnan(benjamini_hochberg([np.nan])).all()


def test_stars_thresholds():
    assert [stars(p) for p in (0.0005, 0.005, 0.03, 0.05, np.nan)] == ["***", "**", "*", "n.s.", ""]


def test_paired_and_unpaired_match_scipy():
    g = np.random.default_rng(0)
    a, b = g.normal(0.80, 0.02, 6), g.normal(0.78, 0.03, 6)
    paired = paired_t(a, b)
    ref = stats.ttest_rel(a, b)
    assert paired["p"] == pytest.approx(ref.pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (paired["ci_low"], paired["ci_high"]) == pytest.approx((lo, hi))
    assert paired["d"] == pytest.approx((a - b).mean() / (a - b).std(ddof=1))
    for equal_var in (True, False):
        res = unpaired_t(a, b[:5], equal_var=equal_var)
        ref = stats.ttest_ind(a, b[:5], equal_var=equal_var)
        assert res["p"] == pytest.approx(ref.pvalue)
        assert (res["ci_low"], res["ci_high"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def _runs(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "seed": s, "value": v} for m, vs in values.items() for s, v in enumerate(vs)])


def test_compare_methods_paired_columns_and_holm_within_table():
    g = np.random.default_rng(1)
    base = g.normal(0.70, 0.02, 5)
    df = _runs({"scratch": base, "moco_v2": base + 0.03 + g.normal(0, 0.01, 5),
                "adam_v1": base + 0.001 + g.normal(0, 0.01, 5)})
    out = compare_methods(df, reference="scratch")
    assert list(out["method"]) == ["scratch", "moco_v2", "adam_v1"]
    row = out.set_index("method").loc["moco_v2"]
    x = df.loc[df.method == "moco_v2", "value"].to_numpy()
    assert row["test"] == "paired t" and row["n_pairs"] == 5
    assert row["p"] == pytest.approx(stats.ttest_rel(x, base).pvalue)
    assert row["p_replication"] == pytest.approx(stats.ttest_ind(x, base).pvalue)
    assert row["diff"] == pytest.approx(x.mean() - base.mean())
    np.testing.assert_allclose(out["p_adjusted"].iloc[1:], holm(out["p"].iloc[1:]))
    assert row["stars"] == stars(row["p_adjusted"]) and row["stars"] != ""
    assert np.isnan(out.loc[0, "p"]) and out.loc[0, "stars"] == ""
    assert out.attrs["reference"] == "scratch" and out.attrs["correction"] == "holm"


def test_compare_methods_pairing_increases_power_on_shared_seed_effects():
    g = np.random.default_rng(2)
    seed_effect = g.normal(0, 0.05, 8)  # large between-seed variation shared by both methods
    df = _runs({"scratch": 0.7 + seed_effect, "dira": 0.72 + seed_effect + g.normal(0, 0.003, 8)})
    row = compare_methods(df, "scratch").iloc[1]
    assert row["p"] < 0.001 < row["p_replication"]


def test_compare_methods_unpaired_without_shared_seeds():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "value": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]})
    row = compare_methods(df, "a").iloc[1]
    assert row["test"] == "Welch t"
    assert row["p"] == pytest.approx(stats.ttest_ind([0.4, 0.5, 0.7], [0.1, 0.2, 0.3], equal_var=False).pvalue)


def test_compare_methods_degenerate_inputs_give_nan_without_raising():
    df = _runs({"ref": [0.5, 0.5, 0.5], "same": [0.5, 0.5, 0.5], "one": [0.9]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compare_methods(df, "ref").set_index("method")
    assert np.isnan(out.loc["same", "p"]) and np.isnan(out.loc["same", "cohens_d"])
    assert np.isnan(out.loc["same", "p_replication"]) and out.loc["same", "diff"] == 0
    assert np.isnan(out.loc["one", "p"]) and np.isnan(out.loc["one", "std"])
    assert out.loc["one", "diff"] == pytest.approx(0.4)


def test_compare_methods_rejects_bad_input():
    df = _runs({"a": [1.0, 2.0], "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="'scratch' not among methods"):
        compare_methods(df, "scratch")
    with pytest.raises(ValueError, match="several rows per"):
        compare_methods(pd.concat([df, df]), "a")
    with pytest.raises(ValueError, match="correction"):
        compare_methods(df, "a", correction="bonferroni")


def test_summarize_and_best_method():
    df = _runs({"a": [1.0, 3.0], "b": [5.0]})
    out = summarize(df, "value", "method").set_index("method")
    assert out.loc["a", "mean"] == 2.0 and out.loc["a", "std"] == pytest.approx(np.sqrt(2)) and out.loc["a", "n"] == 2
    assert np.isnan(out.loc["b", "std"])
    assert best_method(df) == "b" and best_method(df, exclude=["b"]) == "a"
    assert best_method(df, higher_is_better=False) == "a"
    with pytest.raises(KeyError, match="auc"):
        summarize(df, "auc", "method")


def test_percentile_ci_ignores_nan():
    lo, hi = percentile_ci(np.append(np.arange(101.0), np.nan), level=0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    lo, hi = percentile_ci(np.full((10, 2), np.nan))
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_paired_t_treats_differences_equal_up_to_rounding_as_zero_variance():
    a = np.array([3, 5, 7]) / 12
    b = a - 1 / 12  # every paired difference is 1/12 up to float rounding
    res = paired_t(a, b)
    assert res["diff"] == pytest.approx(1 / 12)
    assert np.isnan(res["p"]) and res["ci_low"] == pytest.approx(res["ci_high"])
    assert np.isfinite(paired_t([0.5, 0.6, 0.7], [0.4, 0.45, 0.69])["p"])
