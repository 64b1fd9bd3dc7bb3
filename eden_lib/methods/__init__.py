"""The method registry: the names here are the vocabulary of params.yaml, dvc.yaml and the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eden_lib.methods.adam_v1 import AdamV1
from eden_lib.methods.adam_v2 import AdamV2
from eden_lib.methods.alice import Alice
from eden_lib.methods.ark import Ark
from eden_lib.methods.barlow_twins import BarlowTwins
from eden_lib.methods.base import BuildContext, Method, MethodConfigError, parse_config
from eden_lib.methods.caid import CAiD
from eden_lib.methods.dino import Dino
from eden_lib.methods.dira import DiRA
from eden_lib.methods.external import External
from eden_lib.methods.moco_v2 import MoCoV2
from eden_lib.methods.models_genesis import ModelsGenesis
from eden_lib.methods.scratch import Scratch
from eden_lib.methods.semantic_genesis import SemanticGenesis
from eden_lib.methods.simsiam import SimSiam
from eden_lib.methods.supervised import Supervised
from eden_lib.methods.supervised_site import SupervisedSite
from eden_lib.methods.transvw import TransVW

METHODS: dict[str, type[Method]] = {
    "scratch": Scratch,
    "supervised": Supervised,
    "models_genesis": ModelsGenesis,
    "transvw": TransVW,
    "semantic_genesis": SemanticGenesis,
    "moco_v2": MoCoV2,
    "barlow_twins": BarlowTwins,
    "simsiam": SimSiam,
    "caid": CAiD,
    "dira": DiRA,
    "dino": Dino,
    "adam_v1": AdamV1,
    "adam_v2": AdamV2,
    "ark": Ark,
    "supervised_site": SupervisedSite,
    "alice": Alice,
    "external": External,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise MethodConfigError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


def validate_method_config(name: str, block: Mapping[str, Any]) -> Any:
    """Parse a ``methods.<name>`` block into the method's config dataclass (errors name the key and value)."""
    return parse_config(name, method_class(name).config_cls, block or {})


def build_method(name: str, block: Mapping[str, Any], ctx: BuildContext) -> Method:
    return method_class(name)(validate_method_config(name, block), ctx)


__all__ = ["METHODS", "BuildContext", "Method", "MethodConfigError", "build_method", "method_class",
           "validate_method_config"]
