"""The report's "Genesis family on the 3D tasks" table (genesis_family.md §2.4): cells, stars, order, missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eden_lib.evaluation.statistics import unpaired_t
from eden_lib.reporting.tables import genesis_cell, genesis_table


def _runs() -> pd.DataFrame:
    rows = []
    values = {  # method -> (nodule classification AUC, segmentation dice, keras mean iou) over 3 seeds
        "scratch": ([0.70, 0.71, 0.72], [0.40, 0.42, 0.44], [0.70, 0.71, 0.72]),
        "models_genesis": ([0.80, 0.81, 0.82], [0.41, 0.45, 0.43], [0.70, 0.72, 0.71]),
        "supervised": ([0.90, 0.91, 0.92], [0.50, 0.52, 0.54], [0.75, 0.76, 0.77]),
        "moco_v2": ([0.5, 0.5, 0.5], [0.1, 0.1, 0.1], [0.5, 0.5, 0.5]),  # not a Genesis column
    }
    for method, (auc, dice, kiou) in values.items():
        for seed in range(3):
            rows.append({"method": method, "task": "ct_nodule_classification", "protocol": "finetune", "budget": "1",
                         "seed": seed, "metric": "auc", "value": auc[seed]})
            for metric, v in (("keras_mean_iou", kiou), ("dice", dice)):
                if method == "supervised" and metric == "keras_mean_iou":
                    continue  # a method missing from a row
                rows.append({"method": method, "task": "ct_nodule_segmentation", "protocol": "finetune",
                             "budget": "260_cubes", "seed": seed, "metric": metric, "value": v[seed]})
    rows.append({"method": "scratch", "task": "cxr_classification", "protocol": "finetune", "budget": "1", "seed": 0,
                 "metric": "auc", "value": 0.6})
    return pd.DataFrame(rows)


def test_genesis_table_rows_columns_and_cells():
    table = genesis_table(_runs(), ["scratch", "models_genesis", "transvw", "supervised"], ceiling="supervised")
    assert list(table.columns) == ["task", "protocol", "budget", "metric", "scratch", "models_genesis", "transvw",
                                   "supervised (ceiling)"]
    assert table["metric"].tolist() == ["AUC", "Dice (foreground)", "Keras mean IoU (papers' IoU)"]
    assert table["task"].tolist() == ["nodule classification", "nodule segmentation", "nodule segmentation"]
    auc = table.iloc[0]
    assert auc["scratch"] == "0.710 ± 0.010"  # the reference: no stars
    p = unpaired_t(np.array([0.80, 0.81, 0.82]), np.array([0.70, 0.71, 0.72]), equal_var=True)["p"]
    assert p < 0.001 and auc["models_genesis"] == "0.810 ± 0.010 ***"
    assert auc["transvw"] == "–"  # not run
    assert table.iloc[1]["models_genesis"].endswith(" n.s.")
    assert table.iloc[2]["supervised (ceiling)"] == "–"


@pytest.mark.parametrize("values, expected", [((0.80, 0.81, 0.82), "***"), ((0.73, 0.74, 0.75), "*"), ((0.71, 0.72, 0.73), "n.s.")])
def test_genesis_cell_stars_follow_the_unpaired_student_test(values, expected):
    cell = genesis_cell(np.array(values), np.array([0.70, 0.71, 0.72]))
    assert cell.split()[-1] == expected
    assert genesis_cell(np.array([0.5]), np.array([0.4, 0.6])) == "0.500"  # one run: no std, test undefined
    assert genesis_cell(np.array([]), np.array([0.4, 0.6])) == "–"


def test_genesis_table_is_empty_without_3d_runs():
    runs = _runs()
    assert genesis_table(runs[runs["task"] == "cxr_classification"], ["scratch"]).empty
