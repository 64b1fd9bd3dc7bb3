"""TransVW: transferable visual words (Haghighi et al., "Transferable Visual Words: Exploiting the Semantics of
Anatomical Patterns for Self-supervised Learning", IEEE TMI 2021; ``genesis_family.md`` §3).

Self-classification of self-discovered visual words plus self-restoration of their transformed crops; the
implementation, shared with Semantic Genesis, is :mod:`eden_lib.methods.branches.visual_words`.
"""

from __future__ import annotations

from dataclasses import dataclass

from eden_lib.methods.branches.visual_words import VisualWordsConfig, VisualWordsMethod


@dataclass(frozen=True)
class TransVWConfig(VisualWordsConfig):
    """``methods.transvw``: the released PyTorch values (``pytorch/train.py``, ``data_loader.py``; §3.3-3.4)."""


class TransVW(VisualWordsMethod):
    name = "transvw"
    config_cls = TransVWConfig
