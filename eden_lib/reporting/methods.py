"""The report's "Methods and setup" section, generated from the merged params (never typed by hand).

It states what the numbers of the report were produced with: the data, the pretraining budgets and backbones, every
active method's resolved hyper-parameters (the profile merged over the base values), the transfer protocol per task,
and the settings of the evaluation stages and claims. Changing ``params.yaml`` changes this section.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from eden_lib.reporting.tables import markdown_table


def format_value(value: Any) -> str:
    """A params value as short text: ``[0.45, 1]``, ``{name: resnet18}``, ``0.0001``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings(block: dict, skip: tuple[str, ...] = ()) -> str:
    """``key=value; ...`` of a params block in its own order, without the keys in ``skip``."""
    return "; ".join(f"{k}={format_value(v)}" for k, v in block.items() if k not in skip)


def shape(values: list) -> str:
    """A size as ``96 x 96 x 64``."""
    return " x ".join(format_value(v) for v in values)


def data_lines(cfg: dict) -> list[str]:
    """What the study ran on: the synthetic generators' sizes, or the real roots."""
    d = cfg["data"]
    if d["source"] != "synthetic":
        roots = {k: v for k, v in d["roots"].items() if v}
        return [f"- Data: real (`data.source: {d['source']}`), roots {format_value(roots)}; models see "
                f"{d['image_size']} x {d['image_size']} images."]
    cxr, ct = d["cxr"], d["ct"]
    n_images = cxr["n_patients"] * cxr["images_per_patient"]
    sites = ", ".join(f"`{name}` ({s['dataset']} layout, {len(s['labels'])} labels)" for name, s in d["sites"].items())
    return [
        f"- SynthCXR: {cxr['n_patients']} patients x {cxr['images_per_patient']} image(s) = {n_images} radiographs, "
        f"rendered at {cxr['render_size']} px and seen by the models at {d['image_size']} px; patient-level splits "
        f"(test {cxr['test_fraction']:g}, validation {cxr['val_fraction']:g}); findings {', '.join(cxr['labels'])}; "
        f"sex effect {cxr['sex_effect']:g}.",
        f"- Sites (the Ark setting): {sites}." if sites else "- Sites: none.",
        f"- SynthCT: {ct['n_scans']} scans of {shape(ct['shape'])} voxels (test {ct['test_fraction']:g}); "
        f"{ct['subvolumes_per_scan']} pretraining sub-volumes of {shape(ct['subvolume'])} per scan; nodule "
        f"cubes of {ct['cube_size']} voxels, {ct['negatives_per_scan']} negative candidates per scan.",
    ]


def pretrain_lines(cfg: dict) -> list[str]:
    """Budgets, backbones and continual-pretraining inits shared by every method."""
    p = cfg["pretrain"]
    lines = [
        f"- Pretraining: one seed ({cfg['seed']}); every 2D method {p['image_passes_2d']:,} encoder image-passes, "
        f"every 3D method {p['volume_passes_3d']:,} volume-passes, over {p['epochs']} epochs (one checkpoint each); "
        f"device `{p['device']}`{', bf16 autocast on GPU' if p['amp'] else ''}.",
        f"- Backbones: 2D `{p['backbone_2d']['name']}` ({settings(p['backbone_2d'], ('name',))}); 2D U-Net decoder "
        f"{format_value(p['unet2d_decoder'])}; UNet3D width {p['unet3d_width']}.",
    ]
    if p.get("init"):
        lines.append(f"- Continual pretraining from checkpoints: {format_value(p['init'])}.")
    return lines


def method_table(cfg: dict) -> pd.DataFrame:
    """One row per active method: its dimensions and every resolved hyper-parameter."""
    rows = []
    for method in cfg["active_methods"]:
        block = cfg["methods"].get(method, {})
        dims = "-".join(f"{d}D" for d in block.get("dims", [])) or "–"
        rows.append({"method": f"`{method}`", "dims": dims, "hyper-parameters": settings(block, ("dims",)) or "–"})
    return pd.DataFrame(rows)


def transfer_lines(cfg: dict) -> list[str]:
    """The shared fine-tuning and probing protocol."""
    t = cfg["transfer"]
    f = t["finetune"]
    return [
        f"- Seeds {format_value(t['seeds'])} (paired across methods: same subsets, same seeds); linear probes at "
        f"label fractions {format_value(t['label_fractions'])} ({settings(t['linear_probe'])}); fine-tuning at label "
        f"fraction {t['finetune_fraction']:g}, at least {t['min_positives']} positives per finding in a subset.",
        f"- Fine-tuning: AdamW, batch {f['batch_size']}, lr {f['lr']:g}, weight decay {f['weight_decay']:g}, at least "
        f"{f['min_steps']} steps; {f['evaluations']} validation scores per run on at most {t['validation']['size']} "
        f"held-out samples ({t['validation']['ct_scan_fraction']:g} of the CT training scans), the best round's "
        f"weights kept, patience {f['patience']} (0: never stop early).",
    ]


def task_table(cfg: dict) -> pd.DataFrame:
    """One row per task: protocols, metric and its own settings."""
    rows = []
    for task, block in cfg["tasks"].items():
        rows.append({"task": f"`{task}`", "protocols": ", ".join(block.get("protocols", [])),
                     "settings": settings(block, ("protocols",)) or "–"})
    return pd.DataFrame(rows)


def evaluation_lines(cfg: dict) -> list[str]:
    """The evaluation stages and the claims' settings, one line each."""
    lines = [f"- Reference method of every comparison: `{cfg['report']['reference']}`; paired tests over seeds, "
             "Holm-corrected within a table."]
    for section in ("embedding", "bias", "froc"):
        if cfg.get(section):
            lines.append(f"- `{section}`: {settings(cfg[section])}.")
    for name, block in cfg.get("claims", {}).items():
        lines.append(f"- claim `{name}`: {settings(block)}.")
    return lines


def methods_section(cfg: dict) -> list[str]:
    """The whole "Methods and setup" section as Markdown lines."""
    return [
        "## Methods and setup", "",
        f"Generated from the merged `params.yaml` (profile `{cfg['profile']}`): what every number below was "
        "produced with.", "",
        "### Data", "", *data_lines(cfg), "",
        "### Pretraining", "", *pretrain_lines(cfg), "",
        markdown_table(method_table(cfg)), "",
        "### Transfer", "", *transfer_lines(cfg), "",
        markdown_table(task_table(cfg)), "",
        "### Evaluation and claims", "", *evaluation_lines(cfg), "",
    ]
