"""Report tables: Markdown rendering (no tabulate dependency) and the STUDY §7.1 comparison table."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd

MISSING = "–"  # shown for NaN / not applicable


def _is_nan(x: object) -> bool:
    """NaN, or ``None`` (how a metrics file stores NaN)."""
    return x is None or isinstance(x, Real) and not isinstance(x, Integral) and math.isnan(float(x))


def mean_std_cell(mean: float, std: float, digits: int = 3) -> str:
    """``"0.812 ± 0.014"``; only the mean when ``std`` is NaN (one run); ``"–"`` when the mean is NaN."""
    if _is_nan(mean):
        return MISSING
    return f"{mean:.{digits}f}" if _is_nan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p(p: float, digits: int = 3) -> str:
    """A p-value cell: ``"0.023"``, ``"<0.001"`` below the last digit, ``"–"`` for NaN."""
    if _is_nan(p):
        return MISSING
    floor = 10.0**-digits
    return f"<{floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def _cell(x: object, float_fmt: str) -> str:
    if _is_nan(x) or x is pd.NA:
        return MISSING
    if isinstance(x, Real) and not isinstance(x, (bool, Integral)):
        return format(float(x), float_fmt)
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, float_fmt: str = ".3f", index: bool = False) -> str:
    """Render a frame as a GitHub-flavoured Markdown table.

    Args:
        df: any frame; one table row per frame row.
        float_fmt: format spec for float cells (e.g. ``".3f"``, ``".2e"``); NaN shows as ``"–"``.
        index: also render the index as the first column.

    Returns:
        The table text: header, alignment row (numeric columns right-aligned), one line per row, no trailing newline.
    """
    if index:
        df = df.reset_index()
    header = [str(c).replace("|", "\\|") for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v, float_fmt) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def format_comparison_table(comparison: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The §7.1 table from :func:`eden_lib.evaluation.statistics.compare_methods` output, as text cells.

    Columns: ``method, n, mean ± std, Δ vs <reference> [CI]`` (signed difference with its confidence interval),
    ``d`` (Cohen's d), ``test``, ``p (<correction>)``, ``sig`` (stars on the corrected p) and
    ``p replication`` (the papers' unpaired two-sample t-test, uncorrected). The reference row shows ``"–"`` in the
    comparison columns. Render with :func:`markdown_table`.
    """
    required = ["method", "n", "mean", "std", "diff", "ci_low", "ci_high", "cohens_d", "test", "p_adjusted",
                "stars", "p_replication"]
    missing = [c for c in required if c not in comparison.columns]
    if missing:
        raise KeyError(f"format_comparison_table: columns {missing} missing; pass compare_methods(...) output")
    reference = comparison.attrs.get("reference", comparison["method"].iloc[0])
    correction = comparison.attrs.get("correction", "corrected")
    level = comparison.attrs.get("level", 0.95)

    def diff_cell(r: dict) -> str:
        if _is_nan(r["diff"]):
            return MISSING
        if _is_nan(r["ci_low"]):
            return f"{r['diff']:+.{digits}f}"
        return f"{r['diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"

    rows = comparison.to_dict("records")
    return pd.DataFrame({
        "method": [r["method"] for r in rows],
        "n": [int(r["n"]) for r in rows],
        "mean ± std": [mean_std_cell(r["mean"], r["std"], digits) for r in rows],
        f"Δ vs {reference} [{level:.0%} CI]": [diff_cell(r) for r in rows],
        "d": [MISSING if _is_nan(r["cohens_d"]) else f"{r['cohens_d']:.2f}" for r in rows],
        "test": [r["test"] if isinstance(r["test"], str) else MISSING for r in rows],
        f"p ({correction})": [format_p(r["p_adjusted"], digits) for r in rows],
        "sig": [r["stars"] or MISSING for r in rows],
        "p replication (unpaired t)": [format_p(r["p_replication"], digits) for r in rows],
    })


#: the Genesis-family comparison on the 3D tasks (genesis_family.md §2.4): rows and columns of :func:`genesis_table`
GENESIS_TASKS = {"ct_nodule_classification": "nodule classification", "ct_nodule_segmentation": "nodule segmentation"}
GENESIS_METRICS = {"auc": "AUC", "dice": "Dice (foreground)", "iou": "IoU (foreground)",
                   "keras_mean_iou": "Keras mean IoU (papers' IoU)"}
GENESIS_METHODS = ("scratch", "models_genesis", "transvw", "semantic_genesis")


def genesis_cell(values: np.ndarray, reference: np.ndarray | None, digits: int = 3) -> str:
    """``"mean ± std stars"`` of one method's runs; stars (``n.s.``, ``*``, ``**``, ``***``) from the papers' unpaired
    two-sample Student t-test against the ``reference`` runs (None: the reference cell itself, no stars). ``"–"``
    without runs; no stars where the test is undefined (fewer than two runs, zero variance)."""
    from eden_lib.evaluation.statistics import stars, unpaired_t

    if not values.size:
        return MISSING
    cell = mean_std_cell(values.mean(), values.std(ddof=1) if values.size > 1 else float("nan"), digits)
    mark = stars(unpaired_t(values, reference, equal_var=True)["p"]) if reference is not None and reference.size \
        else ""
    return f"{cell} {mark}" if mark else cell


def _genesis_order(key: tuple) -> tuple:
    task, protocol, budget, metric = key
    return list(GENESIS_TASKS).index(task), protocol, str(budget), list(GENESIS_METRICS).index(metric) \
        if metric in GENESIS_METRICS else len(GENESIS_METRICS)


def genesis_table(runs: pd.DataFrame, methods: list[str], reference: str = "scratch", ceiling: str | None = None,
                  digits: int = 3) -> pd.DataFrame:
    """The papers' 3D comparison table (genesis_family.md §2.4): one row per 3D task x protocol x budget x metric,
    one column per method, cells from :func:`genesis_cell` (mean ± std over seeds, stars against ``reference``).

    Args:
        runs: tidy transfer runs ``(method, task, protocol, budget, seed, metric, value)``; other tasks are ignored.
        methods: the method columns in order, ``reference`` among them.
        reference: the method every other cell of a row is tested against.
        ceiling: appended as the last column, headed ``<ceiling> (ceiling)`` (None: no ceiling column).

    Returns:
        Text cells: columns ``task, protocol, budget, metric`` and one per method.
    """
    columns = [m for m in methods if m != ceiling] + ([ceiling] if ceiling else [])
    names = [f"{m} (ceiling)" if m == ceiling else m for m in columns]
    sub = runs[runs["task"].isin(list(GENESIS_TASKS)) & runs["method"].isin(columns)]
    rows = []
    for key, g in sorted(sub.groupby(["task", "protocol", "budget", "metric"]), key=lambda kg: _genesis_order(kg[0])):
        values = {m: g.loc[g["method"] == m, "value"].dropna().to_numpy(dtype=float) for m in columns}
        ref = values.get(reference)
        cells = [genesis_cell(values[m], None if m == reference else ref, digits) for m in columns]
        rows.append([GENESIS_TASKS[key[0]], key[1], key[2], GENESIS_METRICS.get(key[3], key[3]), *cells])
    return pd.DataFrame(rows, columns=["task", "protocol", "budget", "metric", *names])


def few_shot_table(runs: pd.DataFrame, methods: list[str], digits: int = 3, floor: float = 0.01) -> pd.DataFrame:
    """Adam's few-shot layout (adam_ark.md §1.8): one row per method, one column per structure x shot count.

    Args:
        runs: tidy ``(method, seed, shots, structure, value)``, one row per run.
        methods: the rows, in order.

    Returns:
        Text cells ``"mean ± std"``; in each column the best mean is marked ``▲`` and every other method carries the
        stars of :func:`~eden_lib.evaluation.statistics.compare_methods` against it (paired on seeds,
        Holm-corrected within the column). A column whose best mean is below ``floor`` (no method learned the
        structure) carries no marks: there is nothing to compare.
    """
    from eden_lib.evaluation.statistics import best_method, compare_methods

    table = pd.DataFrame({"method": methods})
    for (structure, shots), g in sorted(runs.groupby(["structure", "shots"]), key=lambda kg: (kg[0][0] != "heart",
                                                                                              kg[0])):
        best = best_method(g)
        cmp = compare_methods(g[["method", "seed", "value"]], reference=best).set_index("method")
        cells = []
        for m in methods:
            if m not in cmp.index:
                cells.append(MISSING)
                continue
            cell = mean_std_cell(cmp.loc[m, "mean"], cmp.loc[m, "std"], digits)
            if cmp.loc[best, "mean"] < floor:
                cells.append(cell)
            else:
                cells.append(f"{cell} ▲" if m == best else f"{cell} {cmp.loc[m, 'stars']}")
        table[f"{structure} {shots}"] = cells
    return table
