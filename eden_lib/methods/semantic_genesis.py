"""Semantic Genesis (Haghighi et al., "Learning Semantics-enriched Representation via Self-discovery,
Self-classification, and Self-restoration", MICCAI 2020; ``genesis_family.md`` §4).

The conference version of TransVW: its released code is TransVW's with other names (§4), so the implementation is
:mod:`eden_lib.methods.branches.visual_words` and the defaults are TransVW's (C = 44, lambda_cls 0.01, lambda_rec 1,
Adam 1e-3, batch 64, elastic deformation + one of four Genesis perturbations).
"""

from __future__ import annotations

from dataclasses import dataclass

from eden_lib.methods.branches.visual_words import VisualWordsConfig, VisualWordsMethod


@dataclass(frozen=True)
class SemanticGenesisConfig(VisualWordsConfig):
    """``methods.semantic_genesis``: the released values, identical to TransVW's (§4)."""


class SemanticGenesis(VisualWordsMethod):
    name = "semantic_genesis"
    config_cls = SemanticGenesisConfig
