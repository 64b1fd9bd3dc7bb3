"""CAiD's transfer ablation (Taher et al., MIDL 2022; dira_caid_transfer_alice_cadpe.md §2.3 (ii), feature reuse), as
statistics: fine-tuning with the first k backbone stages frozen, and what the test AUC loses against k = 0.

A method whose early features the downstream task reuses loses little when they cannot adapt. The unit is a
fine-tuning seed: every method and k fine-tune on the same label subset under the same seed, so the drops pair over
seeds.

- Per (method, k): the test AUC's mean, std and t interval over seeds.
- Per method and k > 0: the drop ``AUC(k = 0) - AUC(k)`` per seed, its mean and t interval.
- The claim's test per k > 0: the claim's method's drop minus its base's, paired t over seeds, Holm over the k.
- The verdict: "held" when some k shows a significantly smaller drop for the claim's method (Holm p < 0.05) and none
  a significantly larger one, "did not hold" when some k shows a significantly larger one, "was not supported"
  otherwise, "was not tested" without both methods.
"""

from __future__ import annotations

import numpy as np

from eden_lib.analysis.site_scaling import mean_ci
from eden_lib.evaluation.statistics import holm, paired_t, stars

#: ``{method: {k: {seed: test AUC}}}``
Scores = dict[str, dict[int, dict[int, float]]]


def _drops(per_k: dict[int, dict[int, float]], k: int) -> dict[int, float]:
    """``{seed: AUC(0) - AUC(k)}`` over the seeds both have."""
    return {s: per_k[0][s] - v for s, v in per_k[k].items() if s in per_k[0]}


def ablation_summary(scores: Scores, method: str, base: str, level: float = 0.95) -> dict:
    """The ablation's statistics (module docstring).

    Args:
        scores: ``{method: {k: {seed: test AUC}}}``; every method has k = 0 and the same k > 0.
        method, base: the claim's method and the base it is compared with (either may be absent: not tested).

    Returns:
        ``auc``: ``{method: {k: {"mean", "std", "ci_low", "ci_high", "n", "values"}}}`` (``values`` in seed order);
        ``drop``: ``{method: {k: mean_ci}}`` for k > 0; ``tests``: ``{k: paired_t of the method's drop minus the
        base's + "n", "p_holm", "stars"}`` (empty when not tested); ``verdict``. The k keys are strings (as in the
        metrics file).
    """
    if any(0 not in per_k for per_k in scores.values()):
        ks = {m: sorted(per_k) for m, per_k in scores.items()}
        raise ValueError(f"ablation_summary: every method needs k = 0 (nothing frozen); got the k {ks}")
    auc = {m: {str(k): {**mean_ci(np.array(list(v.values())), level), "std": _std(list(v.values())),
                   "values": [v[s] for s in sorted(v)]} for k, v in sorted(per_k.items())}
           for m, per_k in scores.items()}
    drop = {m: {str(k): mean_ci(np.array(list(_drops(per_k, k).values())), level) for k in sorted(per_k) if k}
            for m, per_k in scores.items()}
    tests: dict[str, dict] = {}
    if method in scores and base in scores:
        for k in sorted(set(scores[method]) & set(scores[base]) - {0}):
            a, b = _drops(scores[method], k), _drops(scores[base], k)
            shared = sorted(set(a) & set(b))
            tests[str(k)] = {**paired_t(np.array([a[s] for s in shared]), np.array([b[s] for s in shared]), level),
                             "n": len(shared)}
        for t, p in zip(tests.values(), holm([t["p"] for t in tests.values()])):
            t.update(p_holm=float(p), stars=stars(float(p)))
    return {"auc": auc, "drop": drop, "tests": tests, "verdict": ablation_verdict(tests, 1 - level)}


def _std(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if v.size > 1 else float("nan")


def ablation_verdict(tests: dict, alpha: float = 0.05) -> str:
    """"held", "did not hold", "was not supported" or "was not tested" from the per-k tests (module docstring)."""
    if not tests:
        return "was not tested"
    significant = [t["diff"] for t in tests.values() if np.isfinite(t["p_holm"]) and t["p_holm"] < alpha]
    if any(d > 0 for d in significant):
        return "did not hold"
    return "held" if any(d < 0 for d in significant) else "was not supported"
