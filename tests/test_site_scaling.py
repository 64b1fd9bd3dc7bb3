"""Ark's "more data sets give better models": unit scores, slopes, the paired test and the verdict on known inputs."""

import numpy as np
import pandas as pd
import pytest

from eden_lib.analysis.site_scaling import (
    mean_ci,
    paired_against,
    scaling_summary,
    slopes,
    unit_scores,
    verdict_sentence,
)
from eden_lib.pipeline.ark_sites import check_site_counts


def _records(values: dict[tuple[str, str], list[float]]) -> list[dict]:
    """Site-task records, one per seed, from ``{(site, label): [value per seed]}``."""
    n_seeds = len(next(iter(values.values())))
    out = []
    for seed in range(n_seeds):
        for site in sorted({s for s, _ in values}):
            per_class = {label: v[seed] for (s, label), v in values.items() if s == site}
            out.append({"task": f"site_{site}", "seed": seed, "per_class": per_class, "value": np.mean(
                list(per_class.values()))})
    return out + [{"task": "cxr_classification", "per_class": {"x": 0.0}}]  # other tasks are ignored


def test_unit_scores_average_each_site_label_over_seeds():
    scores = unit_scores(_records({("a", "L1"): [0.6, 0.8], ("a", "L2"): [0.5, 0.5], ("b", "L1"): [0.9, 0.7]}))
    assert scores.to_dict() == pytest.approx({("a", "L1"): 0.7, ("a", "L2"): 0.5, ("b", "L1"): 0.8})
    with pytest.raises(ValueError, match="no site-task records"):
        unit_scores([{"task": "cxr_classification", "per_class": {}}])


def test_slopes_recover_a_linear_trend_exactly():
    table = pd.DataFrame({1: [0.5, 0.6], 2: [0.55, 0.6], 4: [0.65, 0.6]})
    assert slopes(table) == pytest.approx([0.05, 0.0])


def test_mean_ci_is_the_t_interval():
    ci = mean_ci(np.array([1.0, 2.0, 3.0, np.nan]))
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert ci["n"] == 3 and ci["mean"] == 2.0
    assert ci["ci_low"] == pytest.approx(2.0 - half) and ci["ci_high"] == pytest.approx(2.0 + half)


def _by_k(gain: float, n_units: int = 12, noise: float = 0.01) -> dict[int, pd.Series]:
    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_tuples([(f"s{i % 3}", f"L{i}") for i in range(n_units)], names=["site", "label"])
    base = rng.uniform(0.55, 0.7, n_units)
    return {k: pd.Series(base + gain * (k - 1) + rng.normal(0, noise, n_units), index=index) for k in (1, 2, 3)}


def test_verdict_held_when_more_sites_help_and_not_when_they_hurt():
    up = scaling_summary(_by_k(0.05))
    assert up["verdict"] == "held" and up["all_vs_one"]["diff"] == pytest.approx(0.1, abs=0.01)
    assert up["slope"]["mean"] == pytest.approx(0.05, abs=0.005) and up["units"] == 12
    assert set(up["per_site"][3]) == {"s0", "s1", "s2"}
    assert "held on the synthetic study" in verdict_sentence(up) and "+0.1" in verdict_sentence(up)
    assert scaling_summary(_by_k(-0.05))["verdict"] == "did not hold"
    flat = _by_k(0.0, noise=0.0)
    flat[3] = flat[1] + np.resize([0.05, -0.05], 12)  # differences of mean exactly 0
    assert scaling_summary(flat)["verdict"] == "was not supported"


def test_summary_needs_two_counts_and_shared_units():
    with pytest.raises(ValueError, match="at least two site counts"):
        scaling_summary({1: pd.Series([0.5])})


def test_paired_against_a_floor_uses_the_largest_count():
    by_k = _by_k(0.05)
    floor = by_k[1] - 0.2
    result = paired_against(by_k, floor)
    assert result["diff"] == pytest.approx((by_k[3] - floor).mean())
    assert result["other"]["mean"] == pytest.approx(floor.mean())


@pytest.mark.parametrize("counts", [[1], [2, 1], [1, 1, 2], [0, 2], [1, 5]])
def test_bad_site_counts_fail_naming_the_key(counts):
    with pytest.raises(ValueError, match=r"claims.ark_sites.site_counts"):
        check_site_counts(counts, 4)
