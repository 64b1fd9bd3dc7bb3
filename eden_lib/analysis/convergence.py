"""TransVW's claim "faster convergence and annotation efficiency" (Haghighi et al., IEEE TMI 2021;
genesis_family.md §3.5-3.7), as statistics over the transfer stage's records.

- Convergence: every fine-tuning run records a validation curve (:mod:`eden_lib.evaluation.finetune`). A run's
  *time to 95 %* is the fraction of its steps after which the curve first reaches ``floor + 0.95 (final - floor)``,
  with ``final`` its last validation score and ``floor`` the chance level of the metric (AUC 0.5, Dice 0): a run
  that ends at chance has no time (NaN). Lower is faster.
- Annotation efficiency: the test score at the reduced budgets (label fractions below 1, k-shot runs), method minus
  reference, per (task, protocol, budget, seed) unit.
- Both compare the claim's method with the reference (``scratch``) paired over shared units (same tasks, budgets,
  seeds), by :func:`~eden_lib.evaluation.statistics.paired_t`; every other method gets the same comparison, Holm
  corrected over methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from eden_lib.evaluation.statistics import holm, paired_t

#: the chance level of each validation metric
FLOORS = {"auc": 0.5, "dice": 0.0}
#: the columns that identify one fine-tuning run across methods (the pairing of the comparisons)
UNIT = ["task", "protocol", "budget", "seed"]


def time_to_fraction(steps: Sequence[float], values: Sequence[float], fraction: float = 0.95,
                     floor: float = 0.0) -> float:
    """Fraction of the run's steps (``steps[i] / steps[-1]``) at the first point whose value reaches
    ``floor + fraction * (values[-1] - floor)``; NaN when the last value is not above ``floor``."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if s.size == 0 or s.shape != v.shape:
        raise ValueError(f"time_to_fraction: steps {s.shape} and values {v.shape} must be equal and non-empty")
    final = v[-1]
    if not np.isfinite(final) or final <= floor:
        return float("nan")
    first = int(np.flatnonzero(v >= floor + fraction * (final - floor))[0])
    return float(s[first] / s[-1])


def curve_table(records: Mapping[str, Sequence[Mapping]], fraction: float = 0.95) -> pd.DataFrame:
    """One row per fine-tuning run with a curve: ``method``, the :data:`UNIT` columns, ``metric``, ``time`` (the
    :func:`time_to_fraction`), ``final`` (last validation score) and ``curve`` (``[(step fraction, value)]``).

    Args:
        records: transfer records per method (``reports/metrics/transfer/<method>.json`` ``runs``); for a task with
            several metrics only the records of the validation metric (:data:`FLOORS`) are read.
    """
    rows = []
    for method, runs in records.items():
        for r in runs:
            curve = r.get("curve") or []
            if not curve or r["metric"] not in FLOORS:
                continue
            steps = [p["step"] for p in curve]
            values = [p["value"] for p in curve]
            rows.append({"method": method, **{k: r[k] for k in UNIT}, "metric": r["metric"],
                         "time": time_to_fraction(steps, values, fraction, FLOORS[r["metric"]]),
                         "final": values[-1], "curve": [(s / steps[-1], v) for s, v in zip(steps, values)]})
    return pd.DataFrame(rows, columns=["method", *UNIT, "metric", "time", "final", "curve"])


def reduced_budget_table(records: Mapping[str, Sequence[Mapping]]) -> pd.DataFrame:
    """The test scores of every run at a reduced budget (a label fraction below 1 or a k-shot budget), one row per
    run and metric: ``method``, the :data:`UNIT` columns, ``metric``, ``value``."""
    def reduced(budget: str) -> bool:
        if budget.endswith("_shots"):
            return True
        try:
            return float(budget) < 1.0
        except ValueError:
            return False

    rows = [{"method": m, **{k: r[k] for k in UNIT}, "metric": r["metric"], "value": r["value"]}
            for m, runs in records.items() for r in runs
            if r["metric"] in FLOORS and reduced(str(r["budget"])) and np.isfinite(r["value"])]
    return pd.DataFrame(rows, columns=["method", *UNIT, "metric", "value"])


def paired_units(table: pd.DataFrame, column: str, method: str, reference: str) -> dict[str, float]:
    """:func:`paired_t` of ``column``, ``method`` minus ``reference``, over the units both have (finite values)."""
    keys = [*UNIT, "metric"]
    a = table[table["method"] == method].set_index(keys)[column]
    b = table[table["method"] == reference].set_index(keys)[column]
    both = a.index.intersection(b.index)
    a, b = a.loc[both].to_numpy(dtype=float), b.loc[both].to_numpy(dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    return {**paired_t(a[keep], b[keep]), "n": int(keep.sum())}


def compare_all(table: pd.DataFrame, column: str, reference: str) -> dict[str, dict[str, float]]:
    """:func:`paired_units` of every other method against ``reference``, with Holm-corrected ``p_holm``."""
    methods = [m for m in table["method"].unique() if m != reference]
    out = {m: paired_units(table, column, m, reference) for m in methods}
    ps = [out[m]["p"] for m in methods]
    for m, p in zip(methods, holm(ps) if methods else []):
        out[m]["p_holm"] = float(p)
    return out


def verdict(convergence: Mapping[str, float], efficiency: Mapping[str, float], alpha: float = 0.05) -> str:
    """``held`` when the method converged faster (time difference < 0) and scored higher at reduced budgets, both at
    p < alpha; ``did not hold`` when either difference is significant the other way; else ``was not supported``."""
    def significant(c: Mapping[str, float]) -> bool:
        return bool(np.isfinite(c["p"]) and c["p"] < alpha)

    faster = significant(convergence) and convergence["diff"] < 0
    better = significant(efficiency) and efficiency["diff"] > 0
    if faster and better:
        return "held"
    if (significant(convergence) and convergence["diff"] > 0) or (significant(efficiency) and efficiency["diff"] < 0):
        return "did not hold"
    return "was not supported"
