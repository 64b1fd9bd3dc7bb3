"""SimSiam: two views, a predictor and a stop-gradient (Chen & He, CVPR 2021, arXiv:2011.10566).

The branch (heads, loss, momentum parts) lives in :mod:`eden_lib.methods.branches.simsiam`, shared with CAiD / DiRA.
"""

from __future__ import annotations

from eden_lib.methods.branches.simsiam import SimSiamBranch, SimSiamConfig
from eden_lib.methods.branches.two_view import TwoViewMethod


class SimSiam(TwoViewMethod):
    name = "simsiam"
    config_cls = SimSiamConfig
    branch_cls = SimSiamBranch
