"""Gender-bias study on frozen features (Ark, MICCAI 2023; adam_ark.md §3.7; STUDY §7).

Linear probes are trained on a male-only, a female-only and a balanced (half/half) training set of the same size,
and each is evaluated on the male and on the female test patients separately. Two comparisons, both with
percentile bootstrap CIs from resampling test patients within each sex (one count matrix per sex, shared by the
three training sets, so every comparison is paired replicate by replicate; every replicate at once through
:func:`weighted_auc`):

- the gap: AUC(male test) - AUC(female test) of one probe. With features carrying no sex effect the CI covers 0
  at about the nominal rate (measured 94 % at 95 %); STUDY §6.1 turns the synthetic sex effect up from 0 to make
  the gap appear.
- Ark's definition of bias, matched minus opposite: on the test patients of sex s, AUC(probe trained on s) -
  AUC(probe trained on the other sex), with the two-sided bootstrap p-value of :func:`bootstrap_p`. Bias shows as a
  significantly positive difference.

The bootstrap conditions on the trained probes (test-patient sampling only), so one seed's p-value ignores how
the probes vary with the training subsample. :func:`pool_seeds` combines seeds by pooling their replicates (a
mixture of the seeds' bootstrap distributions): its spread adds the between-seed spread of the differences, which
makes it conservative for the mean over seeds, and its p-values are Holm-corrected over findings and test sexes.
Measured on features with no sex effect (3 findings, about 200 test patients per sex, 3 seeds, nominal 5 %): 9 %
of one seed's p-values fell below 0.05 with the seeds' training sets nearly the whole pool, 11 % with half of it;
pooled, 7 % and 2 %. The training sample itself (the pool the seeds subsample) is never resampled, hence the first 7 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
from eden_lib.evaluation.metrics import bootstrap_counts, rank_auc, weighted_auc
from eden_lib.evaluation.statistics import bootstrap_p, holm, percentile_ci
from eden_lib.seed import rng

SEXES = ("M", "F")
TRAIN_SETS = ("male", "female", "balanced")
WORD = {"M": "male", "F": "female"}
OPPOSITE = {"male": "female", "female": "male"}
ALPHA = 0.05  # family-wise level of the Holm-corrected matched-minus-opposite tests
MMO = "matched_minus_opposite"


def _mean_over_defined(auc: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Mean over the labels whose point AUC is defined (NaN replicates left out); (..., K) -> (...)."""
    a = np.where(defined, auc, np.nan)
    count = (~np.isnan(a)).sum(axis=-1)
    return np.where(count > 0, np.nansum(a, axis=-1) / np.maximum(count, 1), np.nan)


def _training_sets(train_m: np.ndarray, train_f: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Male-only, female-only and balanced (n//2 male + rest female) index sets of size n, seeded."""
    g = rng(seed, "bias_train")
    return {
        "male": g.choice(train_m, n, replace=False),
        "female": g.choice(train_f, n, replace=False),
        "balanced": np.concatenate([g.choice(train_m, n // 2, replace=False),
                                    g.choice(train_f, n - n // 2, replace=False)]),
    }


def _check_inputs(features: np.ndarray, labels: np.ndarray, sex: np.ndarray, train_idx: np.ndarray,
                  test_idx: np.ndarray, label_names: Sequence[str] | None) -> list[str]:
    """Raise a ValueError naming the problem; return the K label names."""
    n, k = labels.shape if labels.ndim == 2 else (None, None)
    if labels.ndim != 2 or features.ndim != 2 or features.shape[0] != n or sex.shape != (n,):
        raise ValueError(f"bias_study: features {features.shape}, labels {labels.shape}, sex {sex.shape} must be "
                         "(N, D), (N, K), (N,)")
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("bias_study: train_idx and test_idx overlap; expected a patient-level split")
    bad = sorted({str(v) for v in np.unique(sex[np.concatenate([train_idx, test_idx])])} - set(SEXES))
    if bad:
        raise ValueError(f"bias_study: sex values {bad} in train/test rows; expected only {SEXES}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValueError(f"bias_study: {len(names)} label_names for {k} labels")
    for s in SEXES:
        if (sex[test_idx] == s).sum() < 2:
            raise ValueError(f"bias_study: {(sex[test_idx] == s).sum()} test rows with sex {s!r}; expected at least 2")
    return names


def _matched_minus_opposite(point: dict[str, dict[str, np.ndarray]], boot: dict[str, dict[str, np.ndarray]]
                            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per test sex word: point ``(K+1,)`` and paired replicates ``(B, K+1)`` of AUC(matched) - AUC(opposite).

    ``point[train_set][s]`` is ``(K,)``, ``boot[train_set][s]`` ``(B, K)``; the last output column is the mean over
    the labels whose point difference is defined.
    """
    diff_point, diff_boot = {}, {}
    for s, word in WORD.items():
        d = point[word][s] - point[OPPOSITE[word]][s]
        b = boot[word][s] - boot[OPPOSITE[word]][s]
        defined = ~np.isnan(d)
        diff_point[word] = np.append(d, _mean_over_defined(d, defined))
        diff_boot[word] = np.column_stack([b, _mean_over_defined(b, defined)])
    return diff_point, diff_boot


def _mmo_columns(name: str, point: Mapping[str, np.ndarray], boot: Mapping[str, np.ndarray], k: int,
                 level: float) -> dict[str, np.ndarray]:
    """The ``matched_minus_opposite`` columns (``(K+1,)`` each) of training set ``name``'s rows, from
    :func:`_matched_minus_opposite`'s output; NaN for ``balanced``, which has no opposite."""
    if name not in boot:
        nan = np.full(k + 1, np.nan)
        return {MMO: nan, f"{MMO}_ci_low": nan, f"{MMO}_ci_high": nan, f"{MMO}_p": nan}
    lo, hi = percentile_ci(boot[name], level)
    return {MMO: point[name], f"{MMO}_ci_low": lo, f"{MMO}_ci_high": hi, f"{MMO}_p": bootstrap_p(boot[name])}


def _notes(train_y: np.ndarray, n_pos: dict[str, np.ndarray], n_known: dict[str, np.ndarray]) -> np.ndarray:
    """``(K,)`` reason a label's AUC is NaN (one class in the training set or in a sex's test set), else ``""``."""
    note = np.where(((train_y == 1).any(axis=0) & (train_y == 0).any(axis=0)), "", "one class in training set")
    for s, word in WORD.items():
        one = (n_pos[s] == 0) | (n_pos[s] == n_known[s])
        note = np.where(one & (note == ""), f"one class in {word} test", note)
    return note


def _probe_aucs(features: np.ndarray, labels: np.ndarray, sex: np.ndarray, sets: Mapping[str, np.ndarray],
                test_idx: np.ndarray, counts: Mapping[str, np.ndarray], C: float, seed: int, names: list[str]
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Fit one probe per training set; ``point[train_set][s]`` ``(K,)`` and ``boot[train_set][s]`` ``(B, K)`` AUCs on
    the test rows of sex ``s``, resampled by ``counts[s]`` ``(B, n_test_s)``."""
    point, boot = {}, {}
    for name, rows in sets.items():
        scores = fit_predict_linear_probe(features[rows], labels[rows], features[test_idx], C=C, seed=seed,
                                          label_names=names)
        for s in SEXES:
            y, score = labels[test_idx[sex[test_idx] == s]], scores[sex[test_idx] == s]
            point.setdefault(name, {})[s] = rank_auc(y.T, score.T)
            boot.setdefault(name, {})[s] = weighted_auc(y, score, counts[s])
    return point, boot


def bias_study_with_replicates(
    features: np.ndarray,
    labels: np.ndarray,
    sex: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    n_train_per_sex: int | None = None,
    C: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    label_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """:func:`bias_study`'s table and the matched-minus-opposite bootstrap replicates (for :func:`pool_seeds`).

    Returns:
        ``(table, replicates)``: the table as :func:`bias_study`; ``replicates[word]`` (``word`` = ``"male"`` or
        ``"female"``, the test sex) is ``(n_boot, K+1)``, AUC(probe trained on that sex) - AUC(probe trained on the
        other sex) on that sex's resampled test patients; last column the mean over labels.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    sex = np.asarray(sex).astype(str)
    train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    names = _check_inputs(features, labels, sex, train_idx, test_idx, label_names)
    train_m, train_f = train_idx[sex[train_idx] == "M"], train_idx[sex[train_idx] == "F"]
    n_train = n_train_per_sex if n_train_per_sex is not None else min(train_m.size, train_f.size)
    if not 2 <= n_train <= min(train_m.size, train_f.size):
        raise ValueError(f"bias_study: n_train_per_sex={n_train}; expected 2 <= n <= min(male={train_m.size}, "
                         f"female={train_f.size}) training rows")
    test = {s: test_idx[sex[test_idx] == s] for s in SEXES}
    counts = {s: bootstrap_counts(test[s].size, n_boot, rng(seed, "bias_boot", s)) for s in SEXES}
    n_pos = {s: (labels[test[s]] == 1).sum(axis=0) for s in SEXES}
    n_known = {s: (~np.isnan(labels[test[s]])).sum(axis=0) for s in SEXES}

    sets = _training_sets(train_m, train_f, n_train, seed)
    point, boot = _probe_aucs(features, labels, sex, sets, test_idx, counts, C, seed, names)
    mmo_point, mmo_boot = _matched_minus_opposite(point, boot)

    frames = []
    for name, rows in sets.items():
        defined = ~np.isnan(point[name]["M"]) & ~np.isnan(point[name]["F"])
        pt = {s: np.append(point[name][s], _mean_over_defined(point[name][s], defined)) for s in SEXES}
        bt = {s: np.column_stack([boot[name][s], _mean_over_defined(boot[name][s], defined)]) for s in SEXES}
        ci = {s: percentile_ci(bt[s], level) for s in SEXES}
        gap_lo, gap_hi = percentile_ci(bt["M"] - bt["F"], level)
        train_y = labels[rows]
        frames.append(pd.DataFrame({
            "train_set": name, "label": names + ["mean"], "n_train": n_train,
            "auc_male": pt["M"], "auc_male_ci_low": ci["M"][0], "auc_male_ci_high": ci["M"][1],
            "auc_female": pt["F"], "auc_female_ci_low": ci["F"][0], "auc_female_ci_high": ci["F"][1],
            "gap": pt["M"] - pt["F"], "gap_ci_low": gap_lo, "gap_ci_high": gap_hi,
            **_mmo_columns(name, mmo_point, mmo_boot, len(names), level),
            "n_test_male": test["M"].size, "n_test_female": test["F"].size,
            "n_pos_male": np.append(n_pos["M"], n_pos["M"].sum()),
            "n_pos_female": np.append(n_pos["F"], n_pos["F"].sum()),
            "prevalence_male": np.append(n_pos["M"] / np.maximum(n_known["M"], 1), np.nan),
            "prevalence_female": np.append(n_pos["F"] / np.maximum(n_known["F"], 1), np.nan),
            "prevalence_train": np.append((train_y == 1).sum(axis=0) / np.maximum((~np.isnan(train_y)).sum(axis=0), 1),
                                          np.nan),
            "note": np.append(_notes(train_y, n_pos, n_known), ""),
        }))
    return pd.concat(frames, ignore_index=True), mmo_boot


def bias_study(
    features: np.ndarray,
    labels: np.ndarray,
    sex: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    n_train_per_sex: int | None = None,
    C: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    label_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Train probes per training population, evaluate AUC per sex, bootstrap the male - female gap and the
    matched-minus-opposite difference.

    Args:
        features: ``(N, D)`` frozen features of every image.
        labels: ``(N, K)`` labels 0/1, NaN = unknown.
        sex: ``(N,)`` ``"M"`` or ``"F"`` for every row in ``train_idx`` and ``test_idx`` (filter out "Unknown").
        train_idx, test_idx: disjoint row indices (patient-level split).
        seed: seeds the training subsamples and the bootstrap.
        n_train_per_sex: size of every training set (male-only, female-only, balanced); default the size of the
            smaller sex in ``train_idx``.
        C: inverse L2 strength of the probes.
        n_boot: bootstrap replicates; ``level``: CI level.
        label_names: K names; default the column index.

    Returns:
        Tidy frame, one row per training set (``male``, ``female``, ``balanced``) and label (plus ``"mean"``, the
        mean over labels with a defined AUC): ``train_set, label, n_train, auc_male, auc_male_ci_low,
        auc_male_ci_high, auc_female, auc_female_ci_low, auc_female_ci_high, gap`` (male - female),
        ``gap_ci_low, gap_ci_high``; ``matched_minus_opposite`` with ``matched_minus_opposite_ci_low, _ci_high,
        _p`` (:func:`bootstrap_p`): on the ``male`` rows AUC(male-trained) - AUC(female-trained) on the male test
        patients, on the ``female`` rows AUC(female-trained) - AUC(male-trained) on the female test patients, NaN
        on the ``balanced`` rows; ``n_test_male, n_test_female, n_pos_male, n_pos_female, prevalence_male,
        prevalence_female`` (test set, known labels; counts summed over labels on the ``"mean"`` row),
        ``prevalence_train`` and ``note`` (why an AUC is NaN).
    """
    return bias_study_with_replicates(features, labels, sex, train_idx, test_idx, seed, n_train_per_sex, C, n_boot,
                                      level, label_names)[0]


def pool_seeds(tables: Sequence[pd.DataFrame], replicates: Sequence[Mapping[str, np.ndarray]],
               level: float = 0.95) -> pd.DataFrame:
    """Matched minus opposite over seeds: mean point difference, CI and p-value of the pooled replicates, Holm.

    Args:
        tables: one :func:`bias_study` table per seed (same labels, same order).
        replicates: the matching ``{"male" | "female": (B, K+1)}`` of :func:`bias_study_with_replicates`.
        level: CI level.

    Returns:
        One row per test sex (``female``, then ``male``) and label (``"mean"`` last): ``test_sex, label, diff``
        (mean over seeds of the point differences), ``ci_low, ci_high, p`` (percentile CI and :func:`bootstrap_p`
        of the seeds' replicates pooled), ``p_holm`` (Holm over the 2K finding x test-sex tests; NaN on the
        ``"mean"`` rows, which summarise rather than test a finding), ``significant`` (``p_holm < ALPHA``),
        ``n_seeds``.
    """
    if not tables or len(tables) != len(replicates):
        raise ValueError(f"pool_seeds: {len(tables)} tables and {len(replicates)} replicate sets; expected the same "
                         "number, at least 1")
    frames = []
    for word in ("female", "male"):
        points = np.stack([t.loc[t["train_set"] == word, MMO].to_numpy() for t in tables])
        pooled = np.concatenate([r[word] for r in replicates])
        lo, hi = percentile_ci(pooled, level)
        labels = tables[0].loc[tables[0]["train_set"] == word, "label"].to_numpy()
        frames.append(pd.DataFrame({"test_sex": word, "label": labels, "diff": _mean_over_defined(points.T, ~np.isnan(points.T)),
                                    "ci_low": lo, "ci_high": hi, "p": bootstrap_p(pooled), "n_seeds": len(tables)}))
    out = pd.concat(frames, ignore_index=True)
    finding = (out["label"] != "mean").to_numpy()
    out["p_holm"] = np.nan
    out.loc[finding, "p_holm"] = holm(out.loc[finding, "p"].to_numpy())
    out["significant"] = out["p_holm"] < ALPHA
    return out[["test_sex", "label", "diff", "ci_low", "ci_high", "p", "p_holm", "significant", "n_seeds"]]


def _findings(per_sex: Mapping[str, Any]) -> pd.DataFrame:
    """One test sex's ``per_finding`` JSON as a float frame (``None`` from JSON -> NaN), one row per finding."""
    return pd.DataFrame.from_dict(per_sex["per_finding"], orient="index", dtype=float)


def significance_table(mmo: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> pd.DataFrame:
    """Compact table of the pooled matched-minus-opposite tests, one row per method and test sex.

    Args:
        mmo: ``gender.json``'s ``matched_minus_opposite``: ``{method: {"female" | "male": {"mean": {diff, ci_low,
            ci_high, p}, "per_finding": {finding: {..., p_holm}}, "significant": [finding]}}}``.
        methods: the methods to list, in order (those missing from ``mmo`` are skipped).

    Returns:
        Columns ``method, test sex, significant`` (``"n / K"``: findings with Holm p < :data:`ALPHA` out of those
        tested), ``matched - opposite [95% CI]`` (mean over findings), ``p (mean)``.
    """
    rows = []
    for method in (m for m in methods if m in mmo):
        for word in ("female", "male"):
            part = mmo[method][word]
            mean = {k: np.nan if v is None else v for k, v in part["mean"].items()}
            tested = int(_findings(part)["p_holm"].notna().sum())
            rows.append({"method": method, "test sex": word, "significant": f"{len(part['significant'])} / {tested}",
                         "matched - opposite [95% CI]": f"{mean['diff']:+.3f} [{mean['ci_low']:+.3f}, "
                                                         f"{mean['ci_high']:+.3f}]",
                         "p (mean)": mean["p"]})
    return pd.DataFrame(rows, columns=["method", "test sex", "significant", "matched - opposite [95% CI]",
                                       "p (mean)"])


def bias_sentence(method: str, per_method: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown bullet saying which findings show a significant matched-minus-opposite difference, and which
    way (positive = bias as Ark defines it; negative = the opposite-sex probe did better), or that none does."""
    parts = []
    for word in ("female", "male"):
        found = _findings(per_method[word]).loc[list(per_method[word]["significant"]), "diff"]
        for sign, what in ((1, "matched-sex training better"), (-1, "opposite-sex training better")):
            hits = [f"{f} ({d:+.3f})" for f, d in found.items() if np.sign(d) == sign]
            if hits:
                parts.append(f"{what} on {word} test patients for {', '.join(hits)}")
    if not parts:
        return f"- `{method}`: no significant bias at this sex effect (no finding with Holm p < {ALPHA:g})."
    return f"- `{method}`: " + "; ".join(parts) + "."


def mean_abs_gap(per_training_set: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean over training sets and findings of |AUC(male) - AUC(female)|: how large the gaps are, whatever their sign.

    Args:
        per_training_set: ``{"male" | "female" | "balanced": {"per_finding": {finding: {"gap": float, ...}}}}``
            (one entry of the fidelity benchmark's ``sex_effect_sweep``).
    """
    return float(np.mean([abs(v["gap"]) for ts in per_training_set.values() for v in ts["per_finding"].values()]))
