"""BTL's claim "domain-adaptive pretraining bridges the domain gap" (Hosseinzadeh Taher et al., MICCAI-DART 2021;
dira_caid_transfer_alice_cadpe.md §3.1, §3.6: ImageNet -> ChestX-ray14 / CheXpert models best overall), as
statistics.

Conditions (:data:`CONDITIONS`): ``scratch`` (the floor), the natural-image source models transferred directly
(``natural_supervised``, ``natural_moco_v2``), the same after continual pretraining on SynthCXR
(``natural_supervised_cxr``, ``natural_moco_v2_cxr``), and the in-domain ``supervised`` model (the ceiling, the
positive control). The unit of replication is a fine-tuning seed: every condition runs the same seeds on the same
label subsets (the transfer stage's pairing), so every comparison of :data:`COMPARISONS` is a paired t-test over the
shared seeds (:func:`~eden_lib.evaluation.statistics.paired_t`), Holm-corrected over the comparisons of one
evaluation. A linear probe on all labels is deterministic: its seeds repeat one value, so its differences have no
variance and no p (reported, not tested).

Verdict, on the primary evaluation (fine-tuning, the benchmark's protocol), per source: continual minus direct
"held" (Holm p < 0.05, positive), "did not hold" (Holm p < 0.05, negative), "was not supported" (otherwise) or "was
not testable" (no p: fewer than two shared seeds, no variance, a condition missing). The claim: "held" when it held
for every source, "did not hold" when it did not hold for one, "held in part", "was not supported" or "was not
testable" otherwise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eden_lib.analysis.site_scaling import mean_ci
from eden_lib.evaluation.statistics import holm, paired_t, stars

#: the conditions side by side, floor first and ceiling last
CONDITIONS: tuple[str, ...] = ("scratch", "natural_supervised", "natural_supervised_cxr", "natural_moco_v2",
                               "natural_moco_v2_cxr", "supervised")
#: source method -> (direct transfer, after continual pretraining on SynthCXR)
SOURCES: dict[str, tuple[str, str]] = {"supervised": ("natural_supervised", "natural_supervised_cxr"),
                                       "moco_v2": ("natural_moco_v2", "natural_moco_v2_cxr")}
#: (condition, against, family): the claim's tests, every condition against the floor, the domain-adapted models
#: against the in-domain ceiling
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    *((cont, direct, "continual - direct") for direct, cont in SOURCES.values()),
    *((c, "scratch", "vs scratch") for c in CONDITIONS[1:]),
    *((cont, "supervised", "vs in-domain") for _, cont in SOURCES.values()),
)
ALPHA = 0.05


def evaluation_key(protocol: str, budget: str) -> str:
    """The name of one evaluation, e.g. ``finetune@1`` or ``linear_probe@0.1``."""
    return f"{protocol}@{budget}"


def seed_scores(records: list[dict], protocol: str, budget: str, task: str = "cxr_classification") -> pd.Series:
    """The mean AUC of each seed's run of ``task`` x ``protocol`` x ``budget`` (transfer records): a Series indexed by
    seed, sorted (empty when there is no such run)."""
    rows = {r["seed"]: r["value"] for r in records
            if r["task"] == task and r["protocol"] == protocol and str(r["budget"]) == str(budget)}
    return pd.Series(rows, dtype=float).sort_index()


def summary(scores: dict[str, pd.Series], level: float = 0.95) -> dict[str, dict]:
    """Per condition: mean over seeds with its t interval (:func:`~eden_lib.analysis.site_scaling.mean_ci`)."""
    return {c: mean_ci(s.to_numpy(), level) for c, s in scores.items()}


def paired_comparisons(scores: dict[str, pd.Series], level: float = 0.95) -> list[dict]:
    """The comparisons of :data:`COMPARISONS` whose two conditions are in ``scores`` (seed -> value), each a paired t
    over the shared seeds, Holm-corrected together.

    Returns:
        One dict per comparison: ``condition``, ``against``, ``family``, ``n_pairs``, ``diff`` (condition minus
        against), ``ci_low``, ``ci_high``, ``d``, ``p``, ``p_holm``, ``stars`` (on ``p_holm``).
    """
    out = []
    for cond, other, family in COMPARISONS:
        if cond not in scores or other not in scores:
            continue
        both = pd.concat([scores[cond], scores[other]], axis=1, keys=["a", "b"]).dropna()
        test = paired_t(both["a"].to_numpy(), both["b"].to_numpy(), level)
        out.append({"condition": cond, "against": other, "family": family, "n_pairs": len(both), **test})
    adjusted = holm([t["p"] for t in out]) if out else []
    for t, p in zip(out, adjusted):
        t["p_holm"] = float(p)
        t["stars"] = stars(p)
    return out


def find(comparisons: list[dict], condition: str, against: str) -> dict | None:
    """The comparison of ``condition`` against ``against``, or ``None``."""
    return next((t for t in comparisons if t["condition"] == condition and t["against"] == against), None)


def source_verdict(test: dict | None, alpha: float = ALPHA) -> str:
    """One source's continual-minus-direct test -> "held", "did not hold", "was not supported" or "was not
    testable"."""
    if test is None or test["p_holm"] is None or not np.isfinite(test["p_holm"]):
        return "was not testable"
    if test["p_holm"] < alpha:
        return "held" if test["diff"] > 0 else "did not hold"
    return "was not supported"


def claim_verdict(per_source: dict[str, str]) -> str:
    """The claim's verdict from the sources' (:func:`source_verdict`)."""
    found = set(per_source.values())
    if not found or found == {"was not testable"}:
        return "was not testable"
    if "did not hold" in found:
        return "did not hold"
    if found == {"held"}:
        return "held"
    return "held in part" if "held" in found else "was not supported"


def _test_text(t: dict | None) -> str:
    if t is None:
        return "not measured"
    p = "no p" if t["p_holm"] is None or not np.isfinite(t["p_holm"]) else f"Holm p = {t['p_holm']:.3g}"
    return f"{t['diff']:+.3f} (95 % CI {t['ci_low']:+.3f} to {t['ci_high']:+.3f}, {p})"


def verdict_sentence(verdict: str, comparisons: list[dict], evaluation: str) -> str:
    """One generated sentence: the verdict, continual minus direct per source, and the domain-adapted models against
    the in-domain ceiling, on the primary ``evaluation``."""
    parts = [f"{_test_text(find(comparisons, cont, direct))} for the natural {src} source"
             for src, (direct, cont) in SOURCES.items()]
    ceiling = [f"{_test_text(find(comparisons, cont, 'supervised'))} ({src} source)"
               for src, (_, cont) in SOURCES.items()]
    return (f"BTL's claim that continual (domain-adaptive) pretraining bridges the domain gap {verdict} on the "
            f"synthetic study: on CXR classification ({evaluation}, mean AUC, paired over seeds), continual "
            f"pretraining on SynthCXR changed the score of direct transfer by {' and by '.join(parts)}; the "
            f"domain-adapted models differed from the in-domain supervised model (the ceiling) by "
            f"{' and by '.join(ceiling)}.")
