"""The report's "Methods and setup" section is generated from the merged params: what it says follows them."""

from __future__ import annotations

import copy

import pytest

from eden_lib.config import load_params
from eden_lib.reporting.methods import format_value, method_table, methods_section, settings


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_params(profile="synthetic")


def test_format_value_lists_dicts_and_floats() -> None:
    assert format_value([0.45, 1.0]) == "[0.45, 1]"
    assert format_value({"name": "resnet18", "widths": [32, 64]}) == "{name: resnet18, widths: [32, 64]}"
    assert format_value(0.0001) == "0.0001"
    assert settings({"a": 1, "dims": [2], "b": "x"}, skip=("dims",)) == "a=1; b=x"


def test_every_active_method_has_a_row_with_its_resolved_values(cfg: dict) -> None:
    table = method_table(cfg)
    assert list(table["method"]) == [f"`{m}`" for m in cfg["active_methods"]]
    moco = table.set_index("method").loc["`moco_v2`", "hyper-parameters"]
    assert f"queue_size={cfg['methods']['moco_v2']['queue_size']}" in moco  # the profile's value, not the paper's


def test_section_follows_the_params(cfg: dict) -> None:
    text = "\n".join(methods_section(cfg))
    assert text.startswith("## Methods and setup")
    assert f"every 2D method {cfg['pretrain']['image_passes_2d']:,} encoder image-passes" in text
    for task in cfg["tasks"]:
        assert f"`{task}`" in text
    for claim in cfg["claims"]:
        assert f"claim `{claim}`" in text
    changed = copy.deepcopy(cfg)
    changed["pretrain"]["image_passes_2d"] = 1234
    changed["transfer"]["seeds"] = [7, 8]
    changed_text = "\n".join(methods_section(changed))
    assert "every 2D method 1,234 encoder image-passes" in changed_text
    assert "Seeds [7, 8]" in changed_text


def test_real_data_names_its_roots(cfg: dict) -> None:
    real = copy.deepcopy(cfg)
    real["data"]["source"] = "real"
    real["data"]["roots"]["chestxray14"] = "/data/nih"
    text = "\n".join(methods_section(real))
    assert "real (`data.source: real`)" in text and "/data/nih" in text and "SynthCXR" not in text
