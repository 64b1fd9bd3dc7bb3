"""SynthCXR fidelity (STUDY.md §6.1): the properties the science needs, measured at the training resolution.

Run: ``python benchmarks/bench_synth_cxr_fidelity.py`` (about 4 minutes on 2 cores). Writes
``reports/benchmarks/synth_cxr_fidelity.json``; the report stage prints its sex-effect sweep. Exits with status 1
when a property fails, so a change of the generator that loses one is caught.

- Difficulty: the study's 2D encoder (ResNet-18, widths 32-256) trained supervised on 64x64 images (area-resized
  from the 256 render) with all labels and with 10 % of them; AUC per finding on 40 % held-out patients. Rule: every
  finding below 0.95 with all labels, above 0.6 (learnable), and the mean clearly lower with 10 %.
- Sex effect: the gender-bias study (male-only, female-only and balanced probes on the supervised features, AUC
  per sex and finding, bootstrap CI of the male - female gap) at ``sex_effect`` 0, 1 and 2. The mechanisms push
  findings both ways (breast shadows hide lower-zone opacities in women; the sex-dependent CTR and pneumothorax
  rate shift the other findings' difficulty toward women), so the size of the gaps is what grows. Rule: at 0 the
  per-finding CIs cover 0 (at least 85 % of them, the nominal rate being 95 %); the mean absolute per-finding gap
  at the largest effect swept exceeds the one at the smallest by 0.02 and every other (chance alone gives a mean
  absolute gap of about 0.045 here, so intermediate values are not ordered among themselves); at the study's
  value at least two findings have a gap whose CI excludes 0.
- Laterality: left vs right patches of paired landmarks, told apart by a small CNN trained with and without
  horizontal-flip augmentation. Rule: without flips every pair is told apart; flips cost accuracy on the
  mirror-symmetric clavicle heads but not on the hemidiaphragms (heart, gastric bubble: real laterality cues).
- Context: rib 5 vs rib 6 from a small patch and from a patch with context. Rule: the small patch alone is
  ambiguous, context resolves it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eden_lib.analysis.bias import mean_abs_gap  # noqa: E402
from eden_lib.data.splits import patient_holdout  # noqa: E402
from eden_lib.data.synth_cxr import FINDINGS, LANDMARKS, SynthCXRConfig, generate_synth_cxr  # noqa: E402
from eden_lib.paths import reports_dir  # noqa: E402
from small_cnn import small_cnn  # noqa: E402 (benchmarks/ is on sys.path when run)

SIZE = 64
PAIRS = {"clavicle_head": ("right_clavicle_head", "left_clavicle_head"),
         "hemidiaphragm_apex": ("right_hemidiaphragm_apex", "left_hemidiaphragm_apex"),
         "costophrenic_angle": ("right_costophrenic_angle", "left_costophrenic_angle")}


def supervised(x, labels: np.ndarray, train: np.ndarray, test: np.ndarray, epochs: int, seed: int) -> dict:
    """Train the study encoder + linear head on ``train``; test AUC per finding and frozen features of all."""
    import torch
    from torch import nn

    from eden_lib.evaluation.finetune import FinetuneConfig, finetune, predict
    from eden_lib.evaluation.metrics import auc_per_label
    from eden_lib.methods.supervised import masked_bce
    from eden_lib.models.backbones import ResNetEncoder

    torch.manual_seed(seed)
    encoder = ResNetEncoder("resnet18", [32, 64, 128, 256])
    net = nn.Sequential(encoder, nn.Linear(encoder.out_dim, labels.shape[1]))
    y = torch.from_numpy(labels.astype(np.float32))
    finetune(net, masked_bce, x[train], y[train], FinetuneConfig(epochs, 32, 1e-3, 1e-4, device="cpu"), seed)
    scores = predict(net, net, x[test], device="cpu")
    auc = dict(zip(FINDINGS, (float(a) for a in auc_per_label(labels[test], scores))))
    return {"auc": auc, "mean_auc": float(np.nanmean(list(auc.values()))),
            "features": predict(encoder, encoder, x, device="cpu")}


def sex_gap(feats: np.ndarray, data, train: np.ndarray, test: np.ndarray, seeds: list[int]) -> dict:
    """Mean-over-findings male - female AUC gap per training set, averaged over ``seeds`` (CI bounds too)."""
    from eden_lib.analysis.bias import bias_study

    sex = data.meta["sex"].to_numpy()
    frames = [bias_study(feats, data.labels.astype(float), sex, train, test, seed=s, n_train_per_sex=min(300, len(train) // 3), C=0.5,
                         label_names=FINDINGS) for s in seeds]
    out = {}
    for train_set in ("male", "female", "balanced"):
        rows = [f[(f["train_set"] == train_set) & (f["label"] == "mean")].iloc[0] for f in frames]
        out[train_set] = {k: float(np.mean([r[k] for r in rows]))
                          for k in ("auc_male", "auc_female", "gap", "gap_ci_low", "gap_ci_high")}
        per_label = [f[(f["train_set"] == train_set) & (f["label"] != "mean")].set_index("label") for f in frames]
        out[train_set]["per_finding"] = {
            k: {c: float(np.mean([p.loc[k, c] for p in per_label])) for c in ("gap", "gap_ci_low", "gap_ci_high")}
            for k in FINDINGS
        }
    return out


def patch_accuracy(data, names: tuple[str, str], patch: int, size: int, train: np.ndarray, test: np.ndarray,
                   flip: bool, seed: int = 0, epochs: int = 15) -> float:
    """Accuracy of a small CNN telling landmark ``names[0]`` from ``names[1]`` by its ``patch``-pixel patch
    (resampled to ``size``); with ``flip``, training patches are mirrored at random (the augmentation under test)."""
    import torch
    from torch import nn

    from eden_lib.data.patches import crop_around

    torch.manual_seed(seed)
    idx = [LANDMARKS.index(n) for n in names]
    x = crop_around(data.images, data.landmarks[:, idx], patch, size)  # (N * 2, 1, size, size), image-major
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)
    y = torch.arange(2).repeat(len(data.images))
    rows = lambda r: torch.from_numpy(np.concatenate([2 * r, 2 * r + 1]))  # noqa: E731
    tr, te = rows(train), rows(test)

    net = small_cnn((16, 32, 32), 2)
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in tr[torch.randperm(len(tr), generator=g)].split(64):
            xb = x[batch]
            if flip:
                mirror = torch.rand(len(batch), generator=g) < 0.5
                xb = torch.where(mirror[:, None, None, None], xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(net(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(x[te]).argmax(1) == y[te]).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="patients per generated set (one image each)")
    ap.add_argument("--epochs", type=int, default=12, help="supervised training epochs")
    ap.add_argument("--effects", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="sex_effect values swept")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from eden_lib.data.batches import resize_2d

    t0 = time.perf_counter()
    from eden_lib.config import load_params
    from eden_lib.paths import params_file

    study_effect = float(load_params(params_file())["data"]["cxr"]["sex_effect"])
    result: dict = {"n_images": args.n, "size": SIZE, "default_sex_effect": f"{study_effect:g}",
                    "sex_effect_sweep": {}}
    default = None
    for effect in args.effects:
        data = generate_synth_cxr(SynthCXRConfig(n_patients=args.n, sex_effect=effect), args.seed)
        x = resize_2d(data.images, SIZE)
        train, test = patient_holdout(data.meta["patient_id"].to_numpy(), 0.4, args.seed)
        sup = supervised(x, data.labels, train, test, args.epochs, args.seed)
        result["sex_effect_sweep"][f"{effect:g}"] = sex_gap(sup["features"], data, train, test, [0, 1, 2])
        if effect == study_effect:
            default = (data, train, test)
            few = train[np.random.default_rng(args.seed).permutation(len(train))[: len(train) // 10]]
            result["difficulty"] = {
                "all_labels": {k: v for k, v in sup.items() if k != "features"},
                "labels_10pct": {k: v for k, v in supervised(x, data.labels, few, test, args.epochs * 3,
                                                               args.seed).items() if k != "features"},
                "test_positives": {f: int(data.labels[test, k].sum()) for k, f in enumerate(FINDINGS)},
            }
    if default is None:
        raise SystemExit(f"--effects must include the study's sex_effect ({study_effect:g}) for the difficulty and "
                         "anatomy checks")
    data, train, test = default
    result["laterality"] = {
        pair: {f"flip_{flip}": patch_accuracy(data, names, 64, 32, train, test, flip) for flip in (False, True)}
        for pair, names in PAIRS.items()
    }
    result["rib5_vs_rib6"] = {
        f"patch_{p}px": patch_accuracy(data, ("right_rib5_post", "right_rib6_post"), p, 16, train, test, False)
        for p in (12, 80)
    }
    result["checks"] = {k: bool(v) for k, v in checks(result).items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["command"] = "python benchmarks/bench_synth_cxr_fidelity.py " + " ".join(argv or sys.argv[1:])
    out = reports_dir() / "benchmarks" / "synth_cxr_fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    failed = [k for k, ok in result["checks"].items() if not ok]
    if failed:
        print(f"FAILED properties: {failed}", file=sys.stderr)
    return 1 if failed else 0


def checks(r: dict) -> dict[str, bool]:
    """The §6.1 rules as booleans (see the module docstring)."""
    d = r["difficulty"]
    auc = d["all_labels"]["auc"].values()
    sweep = r["sex_effect_sweep"]
    effects = sorted(sweep, key=float)
    at_zero = [v for ts in sweep.get("0", {}).values() for v in ts["per_finding"].values()]
    default = sweep[effects[-1] if r["default_sex_effect"] not in sweep else r["default_sex_effect"]]["balanced"]
    lat = r["laterality"]
    ribs = r["rib5_vs_rib6"]
    return {
        "every_finding_below_0.95": all(a < 0.95 for a in auc),
        "every_finding_learnable_above_0.6": all(a > 0.6 for a in auc),
        "fewer_labels_clearly_lower": d["labels_10pct"]["mean_auc"] < d["all_labels"]["mean_auc"] - 0.03,
        "no_gap_at_sex_effect_0": bool(at_zero)
        and np.mean([v["gap_ci_low"] <= 0 <= v["gap_ci_high"] for v in at_zero]) >= 0.85,
        "gap_grows_with_sex_effect": mean_abs_gap(sweep[effects[-1]]) > mean_abs_gap(sweep[effects[0]]) + 0.02
        and all(mean_abs_gap(sweep[e]) < mean_abs_gap(sweep[effects[-1]]) for e in effects[:-1]),
        "gaps_exclude_0_at_default": sum(v["gap_ci_low"] > 0 or v["gap_ci_high"] < 0
                                         for v in default["per_finding"].values()) >= 2,
        "left_right_told_apart_without_flips": all(v["flip_False"] > 0.9 for v in lat.values()),
        "flips_hide_symmetric_laterality":
            lat["costophrenic_angle"]["flip_True"] < lat["costophrenic_angle"]["flip_False"] - 0.1,
        "real_laterality_cues_survive_flips": lat["hemidiaphragm_apex"]["flip_True"] > 0.85,
        "rib5_rib6_need_context": ribs["patch_12px"] < 0.8 and ribs["patch_80px"] > ribs["patch_12px"] + 0.1,
    }


if __name__ == "__main__":
    sys.exit(main())
