"""Statistics for the report tables (STUDY §7, §7.1): summaries, method comparisons, multiple-testing correction.

The JLiang Lab papers compare methods with an independent two-sample (Student) t-test and stars
(adam_ark.md §1.7, §3.6). Our methods share paired seeds (same label subsets and fine-tuning seeds), so the primary
test is the paired t-test on shared seeds, with a Cohen's d and a 95 % CI of the difference, Holm (or
Benjamini-Hochberg) corrected within the table; the papers' unpaired test is kept as a labelled replication column.
Degenerate inputs (n < 2, zero variance) give NaN, never an exception.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

STAR_LEVELS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def summarize(df: pd.DataFrame, value: str, by: str | Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1, NaN for n=1) and count of ``value`` per group of ``by``; one row per group."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [value, *by] if c not in df.columns]
    if missing:
        raise KeyError(f"summarize: columns {missing} not in the frame (has {list(df.columns)})")
    return df.groupby(by, sort=False)[value].agg(mean="mean", std="std", n="count").reset_index()


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error). NaN entries stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate). NaN entries stay NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    scaled = m / np.arange(1, m + 1) * p[order]
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def stars(p: float | None) -> str:
    """``***`` p<0.001, ``**`` p<0.01, ``*`` p<0.05, ``n.s.`` otherwise, ``""`` for NaN or ``None`` (a metrics
    file's null)."""
    if p is None or np.isnan(p):
        return ""
    return next((s for level, s in STAR_LEVELS if p < level), "n.s.")


def percentile_ci(replicates: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI along ``axis``, ignoring NaN replicates; NaN where every replicate is NaN."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(np.asarray(replicates, dtype=np.float64), [tail, 100 - tail], axis=axis)
    return lo, hi


def bootstrap_p(replicates: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "difference = 0" per column; ``(B, ...)`` replicates -> ``(...)``.

    ``p = min(1, 2 * min(1 + #{d_b <= 0}, 1 + #{d_b >= 0}) / (1 + B'))`` over the B' non-NaN replicates: twice
    the smaller tail (the level at which the percentile CI starts to exclude 0), with the usual +1 correction so
    that p is never 0. NaN where every replicate is NaN.
    """
    d = np.asarray(replicates, dtype=np.float64)
    finite = ~np.isnan(d)
    n = finite.sum(axis=0)
    tail = np.minimum((finite & (d <= 0)).sum(axis=0), (finite & (d >= 0)).sum(axis=0))
    return np.where(n > 0, np.minimum(1.0, 2 * (1 + tail) / (1 + n)), np.nan)


def bootstrap_difference(point: float, replicates: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """``{"diff", "ci_low", "ci_high", "p"}`` of a difference from its bootstrap replicates ``(B,)``: the point
    estimate, the percentile CI (:func:`percentile_ci`) and the two-sided p of zero (:func:`bootstrap_p`)."""
    low, high = percentile_ci(replicates, level)
    return {"diff": float(point), "ci_low": float(low), "ci_high": float(high), "p": float(bootstrap_p(replicates))}


ZERO_SD = 1e-9  # relative s.d. of paired differences treated as exactly zero (float rounding)


def paired_t(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Paired t-test of ``a - b`` (same seeds, aligned): diff, CI, Cohen's d_z (mean/sd of differences), p.

    n < 2 or zero variance of the differences give NaN p and d (the CI collapses to the diff at zero variance).
    Differences equal up to float rounding (e.g. sensitivities k / E computed two ways) count as zero variance: an
    s.d. below :data:`ZERO_SD` times the largest |difference| would otherwise make p spuriously tiny.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    out = {"diff": float(d.mean()) if n else np.nan, "ci_low": np.nan, "ci_high": np.nan, "d": np.nan, "p": np.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd <= ZERO_SD * max(float(np.abs(d).max()), np.finfo(np.float64).tiny):
        sd = 0.0
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    if sd > 0:
        t = out["diff"] / (sd / np.sqrt(n))
        out.update(d=out["diff"] / sd, p=float(2 * stats.t.sf(abs(t), n - 1)))
    return out


def unpaired_t(a: np.ndarray, b: np.ndarray, level: float = 0.95, equal_var: bool = False) -> dict[str, float]:
    """Two-sample t-test of ``a`` vs ``b``: diff of means, CI, Cohen's d (pooled sd), p.

    ``equal_var=True`` is Student's test (the papers' "independent two-sample t-test"); ``False`` is Welch's, used
    for the CI and the primary p when seeds are not shared. n < 2 in a group or zero variance give NaN p and d.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = a.size, b.size
    diff = float(a.mean() - b.mean()) if na and nb else np.nan
    out = {"diff": diff, "ci_low": np.nan, "ci_high": np.nan, "d": np.nan, "p": np.nan}
    if na < 2 or nb < 2:
        return out
    va, vb = a.var(ddof=1), b.var(ddof=1)
    pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    if equal_var:
        se, dof = np.sqrt(pooled * (1 / na + 1 / nb)), na + nb - 2
    else:
        se = np.sqrt(va / na + vb / nb)
        with np.errstate(invalid="ignore", divide="ignore"):
            dof = se**4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    if se > 0:
        half = stats.t.ppf(0.5 + level / 2, dof) * se
        out.update(
            ci_low=diff - half,
            ci_high=diff + half,
            d=diff / np.sqrt(pooled),
            p=float(2 * stats.t.sf(abs(diff / se), dof)),
        )
    else:
        out.update(ci_low=diff, ci_high=diff)
    return out


def compare_methods(
    df: pd.DataFrame,
    reference: str,
    value: str = "value",
    method: str = "method",
    seed: str = "seed",
    correction: str = "holm",
    level: float = 0.95,
) -> pd.DataFrame:
    """Compare every method of a tidy results frame with ``reference`` (the STUDY §7.1 table, as numbers).

    Args:
        df: tidy rows ``(method, seed, value)``, one per method and seed (``seed`` may be absent: unpaired).
        reference: the method every other one is compared with (e.g. ``"scratch"`` or the best other method).
        value, method, seed: column names.
        correction: ``"holm"`` or ``"bh"``, applied to the primary p-values within this table.
        level: confidence level of the difference's CI.

    Returns:
        One row per method (reference first, then in order of appearance) with columns ``method, n, mean, std,
        diff`` (method - reference), ``ci_low, ci_high, cohens_d, test`` (``"paired t"`` on shared seeds when at
        least 2 are shared, else ``"Welch t"``), ``n_pairs, p, p_adjusted, stars`` (on ``p_adjusted``) and
        ``p_replication`` (the papers' unpaired Student t-test on all runs). ``attrs`` holds ``reference``,
        ``correction`` and ``level``.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"compare_methods: correction={correction!r}; expected one of {sorted(CORRECTIONS)}")
    missing = [c for c in (method, value) if c not in df.columns]
    if missing:
        raise KeyError(f"compare_methods: columns {missing} not in the frame (has {list(df.columns)})")
    has_seed = seed in df.columns
    if has_seed and df.duplicated([method, seed]).any():
        dup = df.loc[df.duplicated([method, seed], keep=False), [method, seed]].drop_duplicates().head(3)
        raise ValueError(f"compare_methods: several rows per ({method}, {seed}), e.g. {dup.to_dict('records')}")
    methods = list(dict.fromkeys(df[method]))
    if reference not in methods:
        raise ValueError(f"compare_methods: reference {reference!r} not among methods {methods}")
    runs = {
        m: (df.loc[df[method] == m].set_index(seed)[value] if has_seed else df.loc[df[method] == m, value]).dropna()
        for m in methods
    }
    ref = runs[reference]
    rows = []
    for m in [reference] + [m for m in methods if m != reference]:
        x = runs[m]
        row = {"method": m, "n": int(x.count()), "mean": float(x.mean()), "std": float(x.std(ddof=1))}
        if m == reference:
            rows.append(row)
            continue
        shared = x.index.intersection(ref.index) if has_seed else pd.Index([])
        if len(shared) >= 2:
            res, test = paired_t(x.loc[shared].to_numpy(), ref.loc[shared].to_numpy(), level), "paired t"
        else:
            res, test = unpaired_t(x.to_numpy(), ref.to_numpy(), level, equal_var=False), "Welch t"
        row.update(
            diff=res["diff"], ci_low=res["ci_low"], ci_high=res["ci_high"], cohens_d=res["d"], test=test,
            n_pairs=len(shared), p=res["p"],
            p_replication=unpaired_t(x.to_numpy(), ref.to_numpy(), level, equal_var=True)["p"],
        )
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", "n", "mean", "std", "diff", "ci_low", "ci_high", "cohens_d",
                                      "test", "n_pairs", "p", "p_adjusted", "stars", "p_replication"])
    out["n_pairs"] = out["n_pairs"].astype("Int64")
    out["p_adjusted"] = CORRECTIONS[correction](out["p"].to_numpy(dtype=np.float64))
    out["stars"] = [stars(p) for p in out["p_adjusted"]]
    out.attrs.update(reference=reference, correction=correction, level=level)
    return out


def best_method(
    df: pd.DataFrame, value: str = "value", method: str = "method", exclude: Sequence[str] = (),
    higher_is_better: bool = True,
) -> str:
    """The method with the best mean ``value``, leaving out ``exclude`` (for "vs the best other method")."""
    means = df.loc[~df[method].isin(list(exclude))].groupby(method)[value].mean().dropna()
    if means.empty:
        raise ValueError(f"best_method: no method left after excluding {list(exclude)}")
    return str(means.idxmax() if higher_is_better else means.idxmin())
