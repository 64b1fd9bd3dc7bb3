"""``params.yaml`` -> one resolved, validated dict.

The file holds base values (the papers' hyper-parameters where a method has them) and a ``profiles:`` block of
overrides per profile. DVC cannot choose a block by a parameter, so the merge happens here:

    base  ->  profiles[profile]  ->  overrides (dotted keys)  ->  validation

The base file is its own schema: every key a profile or an override sets must exist in the base with a value of the
same kind (a mapping, a list, a bool, a number, a string; ``null`` in the base accepts anything). Named checks in
``CHECKS`` add the allowed values. Any violation raises :class:`ConfigError` naming the key, the value and what is
allowed, before any work starts.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from eden_lib import paths

#: Profiles DVC may resolve ``profiles.${profile}.<section>`` against: each must declare every section below.
SECTIONS = ("data", "anatomy", "self_discovery", "pretrain", "methods", "transfer", "tasks", "embedding", "bias", "froc",
            "claims", "report")
TOP_LEVEL = ("profile", "seed", "active_methods", *SECTIONS, "profiles")


class ConfigError(ValueError):
    """A key or value of ``params.yaml`` (or an override) that is not allowed."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _triple(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == 3 and all(ok(x) for x in v)


def _range(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) and v[0] <= v[1]


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(s, int) and not isinstance(s, bool) for s in v)


#: dotted key -> (predicate, what is allowed)
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "data.source": (lambda v: v in ("synthetic", "real"), "'synthetic' or 'real'"),
    "data.image_size": (lambda v: _positive_int(v) and v % 32 == 0, "a positive multiple of 32"),
    "data.cxr.n_patients": (_positive_int, "a positive integer"),
    "data.cxr.render_size": (lambda v: _positive_int(v) and v >= 64, "an integer >= 64"),
    "data.cxr.sex_effect": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 3, "a number in [0, 3]"),
    "data.cxr.test_fraction": (_fraction, "a fraction in (0, 1]"),
    "data.cxr.val_fraction": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a fraction in [0, 1)"),
    "data.ct.n_scans": (lambda v: _positive_int(v) and v >= 10, "an integer >= 10 (one per LUNA16 subset at least)"),
    "pretrain.device": (lambda v: v in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
    "pretrain.amp": (lambda v: isinstance(v, bool), "true or false"),
    "pretrain.image_passes_2d": (_positive_int, "a positive integer"),
    "pretrain.volume_passes_3d": (_positive_int, "a positive integer"),
    "pretrain.monitor_samples": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                 "an integer >= 0 (0: no monitored loss)"),
    "transfer.seeds": (_int_list, "a non-empty list of integers"),
    "transfer.label_fractions": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(_fraction(f) for f in v),
        "a non-empty list of fractions in (0, 1]",
    ),
    "transfer.finetune_fraction": (_fraction, "a fraction in (0, 1]"),
    "tasks.cxr_segmentation.shots": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(_positive_int(s) for s in v),
        "a non-empty list of positive integers (training images per few-shot run)",
    ),
    **{f"tasks.{task}.shots": (lambda v: isinstance(v, list) and all(_positive_int(s) for s in v),
                               "a list of positive integers (k of each k-shot run; [] for none)")
       for task in ("cxr_classification", "cxr_site_classification", "ct_nodule_classification",
                    "ct_nodule_segmentation")},
    "transfer.finetune.evaluations": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                      "an integer >= 0 (validation scores per fine-tuning run at least; one per epoch anyway)"),
    "transfer.finetune.patience": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                   "an integer >= 0 (0: never stop early)"),
    "transfer.validation.size": (_positive_int, "a positive integer"),
    "transfer.validation.ct_scan_fraction": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "transfer.workers": (_positive_int, "a positive integer (1: runs one after the other)"),
    "embedding.projections": (
        lambda v: isinstance(v, list) and len(v) > 0 and set(v) <= {"tsne", "umap"},
        "a non-empty list of 'tsne' and/or 'umap'",
    ),
    "bias.n_bootstrap": (_positive_int, "a positive integer"),
    "froc.n_train": (lambda v: _positive_int(v) and v <= 20, "an integer in [1, 20] (CAD-PE IDs 001-020)"),
    "froc.n_test": (lambda v: _positive_int(v) and v <= 20, "an integer in [1, 20] (CAD-PE IDs 021-040)"),
    "froc.shape": (_triple(lambda x: _positive_int(x) and x >= 8), "three integers >= 8, (x, y, z)"),
    "froc.spacing": (_triple(lambda x: _number(x) and x > 0), "three positive voxel sizes in mm, (x, y, z)"),
    "froc.emboli_per_scan": (lambda v: _range(v) and all(_positive_int(x) for x in v),
                             "[min, max] integers with 1 <= min <= max (PE-free scans: pe_free_fraction)"),
    "froc.pe_free_fraction": (lambda v: _number(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "froc.embolus_hu": (_range, "[min, max] HU with min <= max"),
    "froc.contrast_hu": (_range, "[min, max] HU with min <= max, above embolus_hu"),
    "froc.embolus_length_mm": (lambda v: _range(v) and v[0] > 0, "[min, max] mm with 0 < min <= max"),
    "froc.occlusive_fraction": (lambda v: _number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "froc.min_vessel_radius_mm": (lambda v: _number(v) and v > 0, "a positive radius in mm"),
    "froc.patch": (_triple(lambda x: _positive_int(x) and x % 8 == 0), "three positive multiples of 8, (x, y, z)"),
    "froc.window": (_triple(lambda x: _positive_int(x) and x % 8 == 0), "three positive multiples of 8, (x, y, z)"),
    "froc.positive_fraction": (lambda v: _number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "froc.steps": (_positive_int, "a positive integer"),
    "froc.batch_size": (_positive_int, "a positive integer"),
    "froc.lr": (lambda v: _number(v) and v > 0, "a positive learning rate"),
    "froc.overlap": (lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "froc.threshold": (lambda v: _number(v) and 0 < v < 1, "a probability in (0, 1)"),
    "claims.ark_sites.site_counts": (lambda v: _int_list(v) and len(v) >= 2 and v == sorted(set(v)) and v[0] >= 1,
                                     "at least two increasing site counts >= 1 (at most the number of data.sites)"),
    "claims.convergence.fraction": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "claims.interpolation.n_pairs": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2"),
    "claims.interpolation.t": (lambda v: isinstance(v, list) and len(v) > 0 and all(_number(x) and 0 < x < 1 for x in v),
                               "a list of fractions in (0, 1)"),
    "froc.fp_rates": (lambda v: isinstance(v, list) and len(v) > 0 and all(_number(x) and x > 0 for x in v),
                      "a non-empty list of positive FP/scan rates"),
    "froc.tolerance_mm": (lambda v: _number(v) and v >= 0, "a distance >= 0 mm (0: the challenge's hit rule)"),
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


#: mappings whose keys the base does not list (their own checks validate them): ``pretrain.init`` names methods
OPEN_MAPPINGS = frozenset({"pretrain.init"})
#: keys of a ``pretrain.init.<method>`` entry; ``path`` is required
INIT_KEYS = ("path", "source", "dims")


def _merge_open(base: Mapping, override: Mapping) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` without a schema (:data:`OPEN_MAPPINGS`)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        both = isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
        out[key] = _merge_open(out[key], value) if both else copy.deepcopy(value)
    return out


def _merge(base: dict, override: Mapping, where: str) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; every overridden key must exist in ``base`` (except under
    :data:`OPEN_MAPPINGS`)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{where}.{key}" if where else str(key)
        if where in OPEN_MAPPINGS:
            out = _merge_open(out, {key: value})
            continue
        if key not in out:
            allowed = ", ".join(map(str, out)) or "(none)"
            raise ConfigError(f"unknown key '{dotted}' (value {value!r}); allowed keys here: {allowed}")
        have, want = _kind(value), _kind(out[key])
        if want != "null" and have != want:
            raise ConfigError(f"'{dotted}' = {value!r} is a {have}; expected a {want} like {out[key]!r}")
        if want == "mapping" and have == "mapping":
            out[key] = _merge(out[key], value, dotted)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _nest(dotted: Mapping[str, Any]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


#: transfer protocols; ``finetune_encoder``: only the pretrained encoder is loaded, the decoder starts fresh
PROTOCOLS = ("linear_probe", "finetune", "finetune_encoder")


#: the folder of outside checkpoint files; every pretrain stage depends on it, so DVC sees their bytes
EXTERNAL_DIR = "data/external"


def _warn_untracked(path: str, key: str) -> None:
    """Warn when a checkpoint file named by ``key`` lies outside :data:`EXTERNAL_DIR` (DVC sees only its path)."""
    if path and Path(path).parts[:2] != tuple(EXTERNAL_DIR.split("/")):
        warnings.warn(f"{key} = {path!r} lies outside {EXTERNAL_DIR}/: DVC tracks the path, not the file's bytes, "
                      f"so replacing the file does not rerun the stages that read it; move it under {EXTERNAL_DIR}/",
                      UserWarning, stacklevel=3)


def _check_init(cfg: dict, source: str) -> None:
    """``pretrain.init``: ``{<method>: {path: <file>, source: <layout>, dims: [2]}}``; ``source`` (default ``auto``)
    and ``dims`` (default: the method's dimensions, which must then be one) are optional. Whether the method trains
    and pretrains those dimensions is checked with the method blocks (:func:`_check_init_methods`); whether the file
    exists and fits, when pretraining starts."""
    init = cfg["pretrain"]["init"]
    if not isinstance(init, Mapping):
        raise ConfigError(f"{source}: 'pretrain.init' = {init!r}; expected a mapping {{<method>: {{path: <file>}}}}")
    for method, entry in init.items():
        where = f"pretrain.init.{method}"
        if method not in cfg["methods"]:
            raise ConfigError(f"{source}: '{where}' names no method; allowed: {sorted(cfg['methods'])}")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: '{where}' = {entry!r}; expected a mapping with keys {list(INIT_KEYS)}")
        unknown = sorted(set(entry) - set(INIT_KEYS))
        if unknown:
            raise ConfigError(f"{source}: '{where}' has unknown keys {unknown}; allowed: {list(INIT_KEYS)}")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{source}: '{where}.path' = {path!r}; expected the checkpoint file (a non-empty "
                              f"string, relative to the repository root)")
        layout = entry.get("source", "auto")
        if layout != "auto":
            from eden_lib.checkpoints import KEY_MAPS

            if layout not in KEY_MAPS:
                raise ConfigError(f"{source}: '{where}.source' = {layout!r}; allowed: 'auto', "
                                  f"{', '.join(map(repr, sorted(KEY_MAPS)))}")
        _warn_untracked(path, f"{where}.path")
        dims = entry.get("dims", [2, 3])
        if not isinstance(dims, list) or not dims or not set(dims) <= {2, 3} or len(set(dims)) != len(dims):
            raise ConfigError(f"{source}: '{where}.dims' = {dims!r}; expected [2], [3] or [2, 3]")


def _check_init_methods(cfg: dict, source: str) -> None:
    """Each ``pretrain.init`` method trains (``scratch`` / ``external`` do not: ``external`` takes a file as it is)
    and pretrains the dimensions its entry names; an entry without ``dims`` is for a method of one dimension (one file
    cannot fit both the 2D encoder and the UNet3D)."""
    from eden_lib.methods import method_class, validate_method_config

    for method, entry in cfg["pretrain"]["init"].items():
        where = f"pretrain.init.{method}"
        if not method_class(method).trains:
            raise ConfigError(f"{source}: '{where}': {method} does not train, so there is nothing to continue; to "
                              f"transfer from a file as it is, use the external method (methods.external.path_2d / "
                              f"path_3d)")
        own = validate_method_config(method, cfg["methods"][method]).dims
        if "dims" in entry and not set(entry["dims"]) <= set(own):
            raise ConfigError(f"{source}: '{where}.dims' = {entry['dims']!r}; methods.{method}.dims is {list(own)}")
        if "dims" not in entry and len(own) > 1:
            raise ConfigError(f"{source}: '{where}' has no dims and {method} pretrains {list(own)}: one file cannot "
                              f"fit both the 2D encoder and the UNet3D; set '{where}.dims' to [2] or [3]")


def _validate(cfg: dict, source: str) -> None:
    for key, (ok, allowed) in CHECKS.items():
        try:
            value = _get(cfg, key)
        except KeyError:
            raise ConfigError(f"{source}: missing key '{key}'; expected {allowed}") from None
        if not ok(value):
            raise ConfigError(f"{source}: '{key}' = {value!r} is not allowed; expected {allowed}")
    methods = cfg["methods"]
    unknown = [m for m in cfg["active_methods"] if m not in methods]
    if unknown:
        raise ConfigError(
            f"{source}: 'active_methods' names {unknown}, which have no block under 'methods'; "
            f"allowed: {sorted(methods)}"
        )
    if len(set(cfg["active_methods"])) != len(cfg["active_methods"]):
        raise ConfigError(f"{source}: 'active_methods' = {cfg['active_methods']} lists a method twice")
    _check_init(cfg, source)
    tasks = cfg["tasks"]
    for name, block in tasks.items():
        for proto in block.get("protocols", []):
            if proto not in PROTOCOLS:
                raise ConfigError(
                    f"{source}: 'tasks.{name}.protocols' has {proto!r}; allowed: {', '.join(map(repr, PROTOCOLS))}"
                )


def read_raw(path: str | Path | None = None) -> dict:
    """The raw ``params.yaml`` (what DVC sees), checked for its top-level shape."""
    path = Path(path) if path is not None else paths.params_file()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"parameter file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_kind(raw)}")
    missing = [k for k in TOP_LEVEL if k not in raw]
    extra = [k for k in raw if k not in TOP_LEVEL]
    if missing or extra:
        raise ConfigError(
            f"{path}: top-level keys must be exactly {list(TOP_LEVEL)}; missing {missing}, unknown {extra}"
        )
    for name, block in (raw["profiles"] or {}).items():
        lacking = [s for s in SECTIONS if s not in (block or {})]
        if lacking:
            raise ConfigError(
                f"{path}: profile '{name}' must declare every section (use {{}} for none); missing {lacking}"
            )
        lacking = [m for m in raw["active_methods"] or [] if m not in (block["methods"] or {})]
        if lacking:
            raise ConfigError(
                f"{path}: profile '{name}' must give every active method an override block under 'methods' "
                f"(use {{}} for none; DVC tracks profiles.<profile>.methods.<method> per pretraining stage); "
                f"missing {lacking}"
            )
    return raw


def load_params(
    path: str | Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    validate_methods: bool = True,
) -> dict:
    """Load ``params.yaml``, merge the active profile and ``overrides``, validate.

    Args:
        path: the parameter file (default: ``params.yaml`` at the repository root).
        profile: profile to apply; ``None`` uses the file's ``profile`` key.
        overrides: dotted keys applied last, e.g. ``{"transfer.seeds": [0]}``.
        validate_methods: also check every method block against its method's declared config.

    Returns:
        The resolved parameters, without the ``profiles`` block; ``profile`` names the one applied.

    Raises:
        ConfigError: an unknown key, a value of the wrong kind, or a value outside what is allowed.
    """
    raw = read_raw(path)
    source = str(path or paths.params_file())
    profiles = raw.pop("profiles") or {}
    name = profile if profile is not None else raw["profile"]
    if name not in profiles:
        raise ConfigError(f"{source}: profile {name!r} is not defined; allowed: {sorted(profiles)}")
    cfg = _merge(raw, profiles[name], "")
    cfg["profile"] = name
    if overrides:
        cfg = _merge(cfg, _nest(overrides), "")
    _validate(cfg, source)
    from eden_lib.data.synth_sites import check_sites

    check_sites(cfg)
    from eden_lib.pipeline.anatomy import check_anatomy
    from eden_lib.pipeline.domain_transfer import check_domain_transfer
    from eden_lib.pipeline.localisation import check_localisation

    try:
        check_anatomy(cfg["anatomy"])
        check_localisation(cfg["claims"]["localisation"])
        check_domain_transfer(cfg["claims"]["domain_transfer"])
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if validate_methods:
        from eden_lib.methods import validate_method_config

        for method in cfg["active_methods"]:
            validate_method_config(method, cfg["methods"][method])
        if "external" in cfg["active_methods"]:
            for dims in validate_method_config("external", cfg["methods"]["external"]).dims:
                _warn_untracked(cfg["methods"]["external"].get(f"path_{dims}d", ""), f"methods.external.path_{dims}d")
        _check_init_methods(cfg, source)
        from eden_lib.pipeline.self_discovery import check_classes

        check_classes(cfg)
    return cfg
