import numpy as np
import pandas as pd

from eden_lib.evaluation.statistics import compare_methods
from eden_lib.reporting.tables import format_comparison_table, format_p, markdown_table, mean_std_cell


def test_mean_std_cell():
    assert mean_std_cell(0.81234, 0.01351) == "0.812 ± 0.014"
    assert mean_std_cell(81.2, 1.35, digits=1) == "81.2 ± 1.4"
    assert mean_std_cell(0.5, np.nan) == "0.500"
    assert mean_std_cell(np.nan, 0.1) == "–"


def test_format_p():
    assert [format_p(p) for p in (0.0234, 0.0004, np.nan)] == ["0.023", "<0.001", "–"]


def test_markdown_table_shape_alignment_and_escaping():
    df = pd.DataFrame({"method": ["moco_v2", "a|b"], "auc": [0.81234, np.nan], "n": [3, 10]})
    text = markdown_table(df, float_fmt=".2f")
    lines = text.split("\n")
    assert len(lines) == 2 + len(df)
    assert lines[0] == "| method | auc | n |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| moco_v2 | 0.81 | 3 |"
    assert lines[3] == "| a\\|b | – | 10 |"
    unescaped = [line.replace("\\|", "") for line in lines]
    assert all(line.count("|") == df.shape[1] + 1 for line in unescaped)


def test_markdown_table_with_index():
    df = pd.DataFrame({"auc": [0.5]}, index=pd.Index(["scratch"], name="method"))
    assert markdown_table(df, index=True).split("\n")[2] == "| scratch | 0.500 |"


def test_format_comparison_table_from_compare_methods():
    g = np.random.default_rng(0)
    base = g.normal(0.70, 0.01, 4)
    rows = [("scratch", base), ("adam_v1", base + 0.05 + g.normal(0, 0.005, 4)), ("dira", base + g.normal(0, 0.01, 4))]
    df = pd.DataFrame([{"method": m, "seed": s, "value": v} for m, vs in rows for s, v in enumerate(vs)])
    table = format_comparison_table(compare_methods(df, "scratch"))
    assert list(table.columns) == ["method", "n", "mean ± std", "Δ vs scratch [95% CI]", "d", "test", "p (holm)",
                                   "sig", "p replication (unpaired t)"]
    assert list(table["method"]) == ["scratch", "adam_v1", "dira"]
    ref, adam = table.iloc[0], table.iloc[1]
    assert ref["Δ vs scratch [95% CI]"] == "–" and ref["sig"] == "–"
    assert adam["Δ vs scratch [95% CI]"].startswith("+0.05") and "[" in adam["Δ vs scratch [95% CI]"]
    assert adam["sig"] in {"*", "**", "***"} and adam["test"] == "paired t"
    md = markdown_table(table)
    assert len(md.split("\n")) == 5 and "± " in md
