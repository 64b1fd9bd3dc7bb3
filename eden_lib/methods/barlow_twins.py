"""Barlow Twins: redundancy reduction between two views (Zbontar et al., ICML 2021, arXiv:2103.03230).

The branch (heads, loss, momentum parts) lives in :mod:`eden_lib.methods.branches.barlow_twins`, shared with CAiD / DiRA.
"""

from __future__ import annotations

from eden_lib.methods.branches.barlow_twins import BarlowTwinsBranch, BarlowTwinsConfig
from eden_lib.methods.branches.two_view import TwoViewMethod


class BarlowTwins(TwoViewMethod):
    name = "barlow_twins"
    config_cls = BarlowTwinsConfig
    branch_cls = BarlowTwinsBranch
