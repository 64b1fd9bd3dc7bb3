"""MoCo-v2: momentum contrast with a queue of negatives (He et al., CVPR 2020; Chen et al., 2020, arXiv:2003.04297).

The branch (heads, loss, momentum parts) lives in :mod:`eden_lib.methods.branches.moco`, shared with CAiD / DiRA.
"""

from __future__ import annotations

from eden_lib.methods.branches.moco import MoCoV2Branch, MoCoV2Config
from eden_lib.methods.branches.two_view import TwoViewMethod


class MoCoV2(TwoViewMethod):
    name = "moco_v2"
    config_cls = MoCoV2Config
    branch_cls = MoCoV2Branch
