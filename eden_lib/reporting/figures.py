"""Seaborn figures of the study. Each function returns a ``matplotlib.figure.Figure``; :func:`save` writes PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def loss_curves(curve: pd.DataFrame, title: str) -> Figure:
    """``curve``: columns dims, epoch, loss and optionally monitor_loss (the loss on fixed held-out batches after
    each epoch); one panel per dimension."""
    panels = sorted(curve["dims"].unique()) if len(curve) else ["none"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False, layout="constrained")
    for ax, dims in zip(axes[0], panels):
        part = curve[curve["dims"] == dims]
        ax.plot(part["epoch"] + 1, part["loss"], marker="o", label="training (epoch mean)")
        if "monitor_loss" in part and part["monitor_loss"].notna().any():
            ax.plot(part["epoch"] + 1, part["monitor_loss"], marker="s", label="monitored (fixed held-out batches)")
            ax.legend(fontsize=7)
        ax.set(title=f"{title} ({dims})", xlabel="epoch", ylabel="loss")
    if not len(curve):
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no pretraining (random initialisation)", ha="center", va="center",
                        transform=axes[0][0].transAxes)
    return fig


def embedding_grid(coords: pd.DataFrame) -> Figure:
    """``coords``: columns method, projection, x, y, landmark; one panel per (method, projection)."""
    methods = list(dict.fromkeys(coords["method"]))
    projections = list(dict.fromkeys(coords["projection"]))
    fig, axes = plt.subplots(len(projections), len(methods), figsize=(3.4 * len(methods), 3.2 * len(projections)),
                             squeeze=False)
    for i, proj in enumerate(projections):
        for j, method in enumerate(methods):
            part = coords[(coords["method"] == method) & (coords["projection"] == proj)]
            sns.scatterplot(data=part, x="x", y="y", hue="landmark", s=9, linewidth=0, ax=axes[i][j],
                            legend=(i == 0 and j == len(methods) - 1), palette="tab20")
            axes[i][j].set(title=f"{method} ({proj})", xticks=[], yticks=[], xlabel="", ylabel="")
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title="landmark")
    fig.tight_layout()
    return fig


def compositionality_density(cosines: pd.DataFrame) -> Figure:
    """Part-whole cosine densities, one panel per method: ``cosines`` has columns method, matched, mismatched
    (:func:`eden_lib.analysis.compositionality.part_whole_cosines`); the gap between the curves is the score."""
    long = cosines.melt(id_vars="method", value_vars=["matched", "mismatched"], var_name="parts of",
                        value_name="cosine (centred features)")
    long["parts of"] = long["parts of"].map({"matched": "its own parts", "mismatched": "another patch's parts"})
    grid = sns.displot(data=long, x="cosine (centred features)", hue="parts of", col="method", col_wrap=5,
                       kind="kde", common_norm=False, fill=True, height=2.4, aspect=1.2, facet_kws={"sharey": False})
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Whole vs the mean of its 2x2 parts", y=1.02)
    return grid.figure


def metric_bars(df: pd.DataFrame, x: str, y: str, hue: str, col: str, title: str) -> Figure:
    """Mean +- sd bars over seeds: ``df`` has one row per run."""
    grid = sns.catplot(data=df, x=x, y=y, hue=hue, col=col, kind="bar", errorbar="sd", height=3.2, aspect=1.3,
                       sharex=False, sharey=False)
    grid.set_xticklabels(rotation=20)
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def bias_boxes(table: pd.DataFrame) -> Figure:
    """Ark's bias plot for every method: per-finding AUC on female (top) and male (bottom) test patients.

    ``table`` is the bias study's tidy frame over methods and seeds (columns method, seed, train_set, label,
    auc_male, auc_female; the ``"mean"`` rows are left out). One box per method and training set (female-trained
    orange, male-trained blue, balanced grey): the distribution over seeds x findings of the point AUCs.
    """
    per_label = table[table["label"] != "mean"]
    methods = list(dict.fromkeys(per_label["method"]))
    colours = sns.color_palette("colorblind")
    palette = {"female": colours[1], "male": colours[0], "balanced": colours[7]}
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.75 * len(methods) + 2), 6.4), sharex=True, sharey=True,
                             layout="constrained")
    for ax, word in zip(axes, ("female", "male")):
        sns.boxplot(data=per_label, x="method", y=f"auc_{word}", hue="train_set", order=methods,
                    hue_order=["female", "male", "balanced"], palette=palette, fliersize=2, linewidth=0.8, ax=ax,
                    legend=word == "female")
        ax.axhline(0.5, color="0.5", linewidth=0.6, linestyle=":")
        ax.set(title=f"AUC testing in {word} patients", xlabel="", ylabel="AUC per finding")
    plt.setp(axes[1].get_xticklabels(), rotation=30, ha="right")
    sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.01, 1), title="trained on", fontsize=8)
    fig.suptitle("Gender bias: per-finding AUC by training set (boxes over seeds x findings)")
    return fig


def cxr_examples(cxr, n: int = 8) -> Figure:
    """The first ``n`` radiographs of the prepared cache with their landmarks and mask outlines."""
    import numpy as np

    n = min(n, len(cxr.images))
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(2.4 * ((n + 1) // 2), 5.2), squeeze=False)
    for ax, i in zip(axes.flat, range(n)):
        ax.imshow(cxr.images[i], cmap="gray")
        for bit in range(len(cxr.info["masks"])):
            ax.contour((np.asarray(cxr.masks[i]) >> bit) & 1, levels=[0.5], linewidths=0.6,
                       colors=[sns.color_palette("colorblind")[bit % 10]])
        if cxr.landmarks.shape[1]:
            ax.scatter(cxr.landmarks[i, :, 0], cxr.landmarks[i, :, 1], s=6, c="red")
        row = cxr.meta.iloc[i]
        ax.set_title(f"{row['sex']} {row['age']} {row['site']}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def visual_words_grid(crops, labels, ranks, levels, n_classes: int = 6, n_members: int = 6) -> Figure:
    """Self-discovered visual words: one row per class, its members' exact-scale crops (rank 0 = the reference).

    ``crops`` ``(M, *size)`` in [0, 1] (3D crops show their middle slice along the last axis); ``labels``,
    ``ranks``, ``levels`` ``(M,)`` as written by the ``self_discovery`` stage.
    """
    import numpy as np

    classes = np.unique(labels)[:n_classes]
    fig, axes = plt.subplots(len(classes), n_members, figsize=(1.3 * n_members, 1.3 * len(classes)), squeeze=False,
                             layout="constrained")
    for row, c in zip(axes, classes):
        rows = np.flatnonzero((labels == c) & (levels == 0))
        rows = rows[np.argsort(ranks[rows], kind="stable")][:n_members]
        for ax, i in zip(row, rows):
            crop = np.asarray(crops[i], dtype=np.float32)
            ax.imshow(crop[..., crop.shape[-1] // 2].T if crop.ndim == 3 else crop, cmap="gray", vmin=0, vmax=1)
        for ax in row:
            ax.set_axis_off()
        row[0].set_title(f"word {c}", fontsize=8, loc="left")
    return fig
