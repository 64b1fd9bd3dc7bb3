"""Writes the pipeline notebooks under notebooks/ (output-free, stable cell ids).

The notebooks are the committed source; this script is how they are (re)generated so their cells stay thin and
uniform. Run: ``python tools/make_notebooks.py``; then commit the notebooks.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

SETUP = """\
from eden_lib.config import load_params
from eden_lib.reporting.io import StageTimer

cfg = load_params(profile=profile)
timer = StageTimer({timer})  # wall time and peak memory -> reports/timing/
print("profile:", cfg["profile"])"""

REPORT_SETUP = """\
from eden_lib.config import load_params

cfg = load_params(profile=profile)
print("profile:", cfg["profile"])"""

NOTEBOOKS: dict[str, tuple[str, str, list[str]]] = {
    "00_prepare": (
        "# Prepare: synthetic anatomy (or real data) -> native layouts -> real loaders -> tensor cache\n\n"
        "Writes SynthCXR as ChestX-ray14 and SynthCT as LUNA16 under `data/raw/synthetic/` (with `data.source: "
        "synthetic`), reads them back through the loaders used for real data, splits at patient level and writes "
        "`data/prepared/`. Reads params: `seed`, `data`.",
        'profile = None  # None: the profile named in params.yaml',
        [
            SETUP.format(timer='"prepare"'),
            "from eden_lib.pipeline.prepare import prepare_study\n\nsummary = prepare_study(cfg)\nsummary",
            "from eden_lib import paths\nfrom eden_lib.data import prepared\nfrom eden_lib.reporting import figures\n\n"
            "cxr = prepared.load_cxr()\nfig = figures.cxr_examples(cxr)\n"
            "figures.save(fig, paths.figures_dir(\"prepare\") / \"cxr_examples.png\")",
            "cxr.meta.groupby([\"split\", \"sex\"]).size().unstack()",
            "timer.write()",
        ],
    ),
    "05_self_discovery": (
        "# Self-discovery of visual words (TransVW / Semantic Genesis)\n\nAn auto-encoder embeds the training "
        "patients; each visual-word class takes a reference patient, its nearest neighbours and one anchor that passes "
        "the Models Genesis lung test; the same coordinates are cropped from every member at three scales. Done once "
        "for both methods, in the dimensions they pretrain in (nothing when neither is active). Reads params: `seed`, "
        "`data`, `self_discovery`, `methods.transvw`, `methods.semantic_genesis`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"self_discovery"'),
            "from eden_lib.pipeline.self_discovery import run_self_discovery\n\nsummary = run_self_discovery(cfg)\n"
            "summary",
            "from eden_lib.pipeline.self_discovery import save_word_figures\n\nsave_word_figures()",
            "timer.write()",
        ],
    ),
    "10_pretrain": (
        "# Pretrain one method\n\nPretrains `method` in each spatial dimension it supports, with the shared budget "
        "in encoder passes; resumes from `data/checkpoints/<method>/` after a kill. Reads params: `seed`, `data`, "
        "`pretrain`, `methods.<method>`.",
        'method = "scratch"\nprofile = None  # None: the profile named in params.yaml',
        [
            SETUP.format(timer='f"pretrain_{method}"'),
            "from eden_lib.pipeline.pretrain import run_pretrain\n\ncurve = run_pretrain(cfg, method)\ncurve",
            "from eden_lib import paths\nfrom eden_lib.reporting import figures\n\nfig = figures.loss_curves(curve, method)\n"
            "figures.save(fig, paths.figures_dir(\"pretrain\") / f\"{method}.png\")",
            "timer.write(train_seconds=curve[\"seconds\"].sum())  # summed over epochs, also across resumes",
        ],
    ),
    "15_natural_source": (
        "# The natural-image source models (BTL's domain-transfer claim)\n\nSynthNatural: RGB shapes (the label) on "
        "textured backgrounds, a stand-in for ImageNet. `supervised` (shape classes) and `moco_v2` pretrained on it "
        "with the study's methods and engine on a three-channel copy of the study's 2D encoder, saved in the "
        "torchvision and MoCo release layouts under `data/natural/` and read back through `load_pretrained`. Reads "
        "params: `seed`, `data`, `pretrain`, `methods.supervised`, `methods.moco_v2`, `claims.domain_transfer.source`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"natural_source"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.natural_source import run_natural_source\n\nmetrics = "
            "run_natural_source(cfg)\nprint(\"random-encoder probe accuracy:\", "
            "metrics[\"probe_accuracy_random_encoder\"])\npd.DataFrame(metrics[\"models\"]).T",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"natural_source\") / \"samples.png\"))",
            "timer.write()",
        ],
    ),
    "20_transfer": (
        "# Transfer one method\n\nEvery downstream task x protocol x label budget x seed for `method`: linear probes "
        "on frozen features (extracted once to `data/features/<method>.npz`) and full fine-tuning. Reads params: "
        "`seed`, `data`, `pretrain`, `transfer`, `tasks`, `embedding`.",
        'method = "scratch"\nprofile = None  # None: the profile named in params.yaml',
        [
            SETUP.format(timer='f"transfer_{method}"'),
            "from eden_lib.pipeline.transfer import run_transfer\n\nruns = run_transfer(cfg, method)",
            "runs.groupby([\"task\", \"protocol\", \"budget\"])[\"value\"].agg([\"mean\", \"std\", \"count\"])",
            "timer.write()",
        ],
    ),
    "30_embedding": (
        "# Zero-shot landmark embeddings\n\nkNN landmark identification, silhouette, cross-patient matching, "
        "part-whole compositionality and t-SNE / UMAP maps for every active method, with floors (raw pixels + PCA, random init) and the supervised "
        "ceiling. Reads params: `seed`, `data`, `embedding`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"embedding"'),
            "from eden_lib.pipeline.embedding import run_embedding\n\ntable, coords, cosines = run_embedding(cfg)\ntable",
            "from eden_lib import paths\nfrom eden_lib.reporting import figures\n\nfig = figures.embedding_grid(coords)\n"
            "figures.save(fig, paths.figures_dir(\"embedding\") / \"landmarks.png\")",
            "fig = figures.compositionality_density(cosines)\n"
            "figures.save(fig, paths.figures_dir(\"embedding\") / \"compositionality.png\")",
            "timer.write()",
        ],
    ),
    "40_gender_bias": (
        "# Gender bias\n\nLinear probes trained on male-only, female-only and balanced sets of the same size; AUC per "
        "sex on the test set; male - female gaps with bootstrap CIs; matched- minus opposite-sex-trained AUC per test sex "
        "and finding with pooled-bootstrap p-values, Holm-corrected. Reads params: `seed`, `data`, `transfer`, "
        "`bias`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"bias"'),
            "from eden_lib.pipeline.bias import run_bias\n\ntable = run_bias(cfg)\n"
            "table[table[\"label\"] == \"mean\"].groupby([\"method\", \"train_set\"])[[\"auc_male\", \"auc_female\", "
            "\"gap\"]].mean()",
            "from eden_lib import paths\nfrom eden_lib.reporting import figures\n\nfig = figures.bias_boxes(table)\n"
            "figures.save(fig, paths.figures_dir(\"bias\") / \"gender.png\")",
            "timer.write()",
        ],
    ),
    "60_froc": (
        "# Pulmonary embolism detection (FROC)\n\nA UNet3D detector per method with a 3D network (scratch and every "
        "exported UNet3D), fine-tuned on CTPA training scans (SynthCTPA written and read back in the CAD-PE layout, or "
        "the real release) and run on the test scans; connected components of the probability map become scored "
        "markers, scored per embolus with the CAD-PE hit rule: sensitivity at 1, 2, 4 false positives per scan and the "
        "FROC curve, mean ± std over the transfer seeds, compared with scratch. Reads params: `seed`, `data`, "
        "`pretrain`, `transfer.seeds`, `froc`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"froc"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.froc import run_froc\n\nmetrics = run_froc(cfg, "
            "cfg[\"active_methods\"])\nprint(\"skipped:\", metrics[\"skipped\"])\npd.DataFrame({(m, k): {s: v[s] for s in "
            "(\"mean\", \"std\", \"stars\")} for m, per in metrics[\"summary\"].items() for k, v in per.items()}).T",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"froc\") / \"froc_curves.png\"))",
            "timer.write()",
        ],
    ),
    "06_anatomy": (
        "# Anatomy: view mining for Alice\n\nA dense anatomical embedding (fine and coarse, SAM-like) is trained on the "
        "training scans by matching corresponding voxels of two crops of one scan; it then matches points across scans, "
        "so two crops of two patients centred on the same anatomy form one view pair. Oracle pairs (the synthetic "
        "landmarks' affine map) and random pairs are the ablation's controls; every mode is scored by how far its key "
        "point lies from the query's true anatomical counterpart. Nothing runs when `alice` is not active. Reads "
        "params: `seed`, `data`, `anatomy`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"anatomy"'),
            "from eden_lib.pipeline.anatomy import run_anatomy\n\nsummary = run_anatomy(cfg)\nsummary",
            "timer.write()",
        ],
    ),
    "70_ark_sites": (
        "# Ark: do more data sets give better models?\n\nArk pretrained on the first k sites of `data.sites` for each "
        "k of `claims.ark_sites.site_counts` (the shared pretraining budget), every model scored on every site's own "
        "task with the transfer stage's linear probe; compared over (site, label) units with the transfer stage's "
        "`scratch` (floor) and `supervised_site` (one site, no accrual). Reads params: `seed`, `data`, `pretrain`, "
        "`methods.ark`, `transfer`, `tasks`, `claims.ark_sites`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"ark_sites"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.ark_sites import run_ark_sites\n\nmetrics = "
            "run_ark_sites(cfg)\nprint(metrics[\"sentence\"])\npd.DataFrame(metrics[\"per_k\"]).T",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"ark_sites.png\"))",
            "timer.write()",
        ],
    ),
    "71_interpolation": (
        "# Adam-v2: emergent interpolation and extrapolation?\n\nFor landmark pairs A, B of the embedding stage's test "
        "patients, the patch at C = (1 - t) A + t B should embed near (1 - t) E_A + t E_B and the patch at D = B + t (B - A) "
        "near E_B + t (E_B - E_A). Scored on centred features as matched minus mismatched cosine (the true patch of "
        "another pair is the control), for every 2D method and the raw-pixel floor; the claim's method is compared "
        "with every other, paired over pairs, Holm-corrected. Reads params: `seed`, `data`, `embedding`, "
        "`claims.interpolation`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"interpolation"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.interpolation import run_interpolation\n\nmetrics = "
            "run_interpolation(cfg)\nprint(metrics[\"sentence\"])\npd.DataFrame({(m, k): v for m, per in "
            "metrics[\"methods\"].items() for k, v in per.items()}).T",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"interpolation.png\"))",
            "timer.write()",
        ],
    ),
    "72_separability": (
        "# CAiD: separability and feature reuse?\n\nPairwise cosine distances between the frozen features of test "
        "radiographs for every 2D method (CAiD against its base and scratch), the linear CKA between pretrained and "
        "fine-tuned features per backbone stage (`claims.separability.reuse_methods`), and the transfer ablation: "
        "test AUC of CXR fine-tuning with the first k backbone stages frozen (`claims.separability.freeze_stages`; "
        "k = 0 from the transfer stage's metrics). Reads params: `seed`, `data`, `pretrain`, `transfer`, `tasks`, "
        "`claims.separability`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"separability"'),
            "from eden_lib.pipeline.separability import run_separability\n\nmetrics = run_separability(cfg)\n"
            "print(metrics[\"sentence\"])\nmetrics[\"separability\"]",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"separability.png\"))",
            "timer.write()",
        ],
    ),
    "73_genesis_dims": (
        "# Models Genesis: does 3D beat 2D and 2.5D on 3D tasks?\n\nThe 2D encoders / U-Nets of "
        "`claims.genesis_dims.methods` applied slice by slice (2D) and to three orthogonal slices (2.5D) on nodule "
        "classification (linear probe) and nodule segmentation (fine-tuning), against the same methods' 3D runs of the "
        "transfer stage; paired over seeds, Holm-corrected. Reads params: `seed`, `data`, `pretrain`, `transfer`, "
        "`tasks`, `claims.genesis_dims`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"genesis_dims"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.genesis_dims import run_genesis_dims\n\nmetrics = "
            "run_genesis_dims(cfg)\nprint(metrics[\"sentence\"])\npd.DataFrame(metrics[\"comparisons\"])",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"genesis_dims.png\"))",
            "timer.write()",
        ],
    ),
    "74_convergence": (
        "# TransVW: faster convergence and annotation efficiency?\n\nEvery fine-tuning run of the transfer stage records "
        "a validation curve. Per run: the fraction of its steps after which the curve first reaches 95 % of its final "
        "score (above the metric's chance level); per reduced label budget (label fractions below 1, k-shot runs): the "
        "test score. Each method against `scratch`, paired over shared task x protocol x budget x seed runs, "
        "Holm-corrected over methods. Trains nothing. Reads params: `active_methods`, `report.reference`, "
        "`claims.convergence`, and the transfer stage's metrics.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"convergence"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.convergence import run_convergence\n\nmetrics = "
            "run_convergence(cfg)\nprint(metrics[\"sentence\"])\npd.DataFrame(metrics[\"convergence\"]).T",
            "from IPython.display import Image, display\n\nfrom eden_lib import paths\n\n"
            "display(Image(filename=str(paths.figures_dir(\"claims\") / \"convergence.png\")))\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"convergence_budgets.png\"))",
            "timer.write()",
        ],
    ),
    "75_localisation": (
        "# DiRA: lesion localisation from image-level labels?\n\nEach method of `claims.localisation.methods` is "
        "fine-tuned on CXR classification as the transfer stage does (every `transfer.seeds`); the Grad-CAM map of "
        "each finding is scored against the ChestX-ray14 bounding boxes (`BBox_List_2017.csv`) of the test images: "
        "pointing game and IoU, 95 % bootstrap CIs over boxes, a random-map floor and an image-free prior; DiRA "
        "against its base and scratch, paired over boxes. Reads params: `seed`, `data`, `pretrain`, `transfer`, "
        "`tasks`, `claims.localisation`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"localisation"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.localisation import run_localisation\n\nmetrics = "
            "run_localisation(cfg)\nprint(metrics[\"sentence\"])\npd.DataFrame({name: {score: s[score][\"mean\"] for "
            "score in (\"pointing\", \"iou\")} for name, s in metrics[\"scores\"].items()}).T",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"localisation.png\"))",
            "timer.write()",
        ],
    ),
    "76_domain_transfer": (
        "# BTL: does continual pretraining bridge the domain gap?\n\nThe natural source models (stage "
        "`natural_source`) loaded through `load_pretrained` into the study encoder and transferred to CXR "
        "classification directly and after continual pretraining on SynthCXR with their own method, beside `scratch` "
        "(floor) and the in-domain `supervised` model (ceiling) of the transfer stage; fine-tuning over the transfer "
        "seeds and linear probes, paired over seeds, Holm-corrected. Reads params: `seed`, `data`, `pretrain`, "
        "`methods.supervised`, `methods.moco_v2`, `transfer`, `tasks`, `claims.domain_transfer`, `active_methods`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            SETUP.format(timer='"domain_transfer"'),
            "import pandas as pd\n\nfrom eden_lib.pipeline.domain_transfer import run_domain_transfer\n\nmetrics = "
            "run_domain_transfer(cfg)\nprint(metrics[\"sentence\"])\n"
            "pd.DataFrame(metrics[\"comparisons\"][metrics[\"primary\"]])",
            "from IPython.display import Image\n\nfrom eden_lib import paths\n\n"
            "Image(filename=str(paths.figures_dir(\"claims\") / \"domain_transfer.png\"))",
            "timer.write()",
        ],
    ),
    "90_report": (
        "# Report\n\nAggregates every metrics file into `reports/REPORT.md`: tables with mean ± std, differences with "
        "CIs, Holm-corrected stars, the replication t-test, figures and stage wall times. Reads params: "
        "`active_methods`, `report`, `transfer`.",
        "profile = None  # None: the profile named in params.yaml",
        [
            REPORT_SETUP,
            "from eden_lib import paths\nfrom eden_lib.pipeline.report import build_report, transfer_runs\nfrom eden_lib.reporting import figures"
            "\n\nruns = transfer_runs(cfg)\nfig = figures.metric_bars(runs, x=\"setting\", y=\"value\", hue=\"method\", "
            "col=\"task\", title=\"Transfer: mean AUC / Dice / IoU over classes, ± sd over seeds\")\n"
            "figures.save(fig, paths.figures_dir(\"report\") / \"transfer.png\")",
            "from IPython.display import Markdown\n\nMarkdown(build_report(cfg))",
        ],
    ),
}


def build(name: str, header: str, parameters: str, calls: list[str]) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(header), new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(src) for src in calls]
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i}"
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name, (header, parameters, calls) in NOTEBOOKS.items():
        nbformat.write(build(name, header, parameters, calls), ROOT / "notebooks" / f"{name}.ipynb")


if __name__ == "__main__":
    main()
