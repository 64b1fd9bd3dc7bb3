"""Ark's claim "more data sets give better models" (Ma et al., MICCAI 2023; adam_ark.md §3.6-3.8), as statistics.

Ark is pretrained on the first k sites for growing k, and every model is scored on every site's own task (a linear
probe, :func:`eden_lib.pipeline.transfer.site_classification`). The unit of replication is one label of one site
(its AUC averaged over the probe seeds and label fractions): the same units are scored for every k and every
comparison method, so the comparisons are paired over units.

- The trend: per unit, the least-squares slope of AUC against k; the mean slope over units with its t interval.
- The claim's test: all sites against one site, paired t over units (``paired_t``).
- The verdict: "held" when all sites beat one site at p < 0.05 with a positive mean slope whose interval excludes 0,
  "did not hold" when the difference is significant the other way, else "was not supported".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from eden_lib.evaluation.statistics import paired_t


def unit_scores(records: list[dict]) -> pd.Series:
    """Transfer records of the site tasks (``task = site_<name>``, ``per_class``) -> the AUC of every (site, label)
    unit averaged over seeds and budgets: a Series indexed by ``(site, label)``."""
    rows = [(r["task"].removeprefix("site_"), label, value)
            for r in records if r["task"].startswith("site_") for label, value in r["per_class"].items()]
    if not rows:
        raise ValueError("no site-task records (task 'site_<name>' with per_class AUCs) to score")
    df = pd.DataFrame(rows, columns=["site", "label", "value"])
    return df.groupby(["site", "label"], sort=True)["value"].mean()


def mean_ci(values: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` (NaN dropped) with its t interval: ``{"mean", "ci_low", "ci_high", "n"}``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = v.size
    mean = float(v.mean()) if n else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(n)}


def slopes(scores: pd.DataFrame) -> np.ndarray:
    """Per-unit least-squares slope of AUC against k: ``scores`` has one column per k (ints), one row per unit."""
    k = np.asarray(scores.columns, dtype=float)
    y = scores.to_numpy(dtype=float)
    kc = k - k.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ kc / (kc @ kc)


def scaling_summary(by_k: dict[int, pd.Series], level: float = 0.95) -> dict:
    """The claim's statistics from the unit scores of each k (``{k: unit_scores(...)}``, k >= 1, at least two).

    Returns:
        ``per_k``: ``{k: mean_ci}`` over units; ``per_site``: ``{k: {site: mean}}``; ``slope``: mean_ci of the
        per-unit slopes (AUC per added site); ``all_vs_one``: :func:`paired_t` of the largest k against k = smallest;
        ``verdict``: "held", "did not hold" or "was not supported".
    """
    if len(by_k) < 2:
        raise ValueError(f"site scaling needs at least two site counts, got {sorted(by_k)}")
    ks = sorted(by_k)
    table = pd.concat({k: by_k[k] for k in ks}, axis=1).dropna()
    if table.empty:
        raise ValueError("site scaling: no (site, label) unit is scored for every site count")
    slope = mean_ci(slopes(table), level)
    test = paired_t(table[ks[-1]].to_numpy(), table[ks[0]].to_numpy(), level)
    significant = np.isfinite(test["p"]) and test["p"] < 1 - level
    if significant and test["diff"] > 0 and slope["ci_low"] > 0:
        verdict = "held"
    elif significant and test["diff"] < 0:
        verdict = "did not hold"
    else:
        verdict = "was not supported"
    return {
        "site_counts": ks,
        "units": int(len(table)),
        "per_k": {k: mean_ci(table[k].to_numpy(), level) for k in ks},
        "per_site": {k: table[k].groupby(level="site").mean().to_dict() for k in ks},
        "slope": slope,
        "all_vs_one": test,
        "verdict": verdict,
    }


def paired_against(by_k: dict[int, pd.Series], other: pd.Series, level: float = 0.95) -> dict:
    """The largest k against another method's unit scores (a floor or a control), paired over shared units."""
    top = by_k[max(by_k)]
    both = pd.concat([top, other], axis=1, keys=["ark", "other"]).dropna()
    return {**paired_t(both["ark"].to_numpy(), both["other"].to_numpy(), level),
            "other": mean_ci(both["other"].to_numpy(), level)}


def verdict_sentence(summary: dict) -> str:
    """One generated sentence: whether the claim held, by how much, with the interval and p."""
    t, ks = summary["all_vs_one"], summary["site_counts"]
    p = "n/a" if not np.isfinite(t["p"]) else f"{t['p']:.3g}"
    return (f"The claim that more data sets give better models {summary['verdict']} on the synthetic study: Ark on "
            f"{ks[-1]} sites against {ks[0]} site scored {t['diff']:+.3f} mean AUC (95 % CI {t['ci_low']:+.3f} to "
            f"{t['ci_high']:+.3f}, paired t over {summary['units']} site labels, p = {p}), "
            f"{summary['slope']['mean']:+.4f} AUC per added site (95 % CI {summary['slope']['ci_low']:+.4f} to "
            f"{summary['slope']['ci_high']:+.4f}).")
