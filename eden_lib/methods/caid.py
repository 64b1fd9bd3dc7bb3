"""CAiD: context-aware instance discrimination (Taher et al., MIDL 2022); the family and its branches:
:mod:`eden_lib.methods.branches.restorative`."""

from __future__ import annotations

from eden_lib.methods.branches.restorative import CAiDConfig, DiscriminativeRestorative


class CAiD(DiscriminativeRestorative):
    name = "caid"
    config_cls = CAiDConfig
