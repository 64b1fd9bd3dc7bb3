"""Single-site supervised pretraining: the baseline Ark is measured against, 2D.

Ma et al., "Foundation Ark", MICCAI 2023 (fact sheet: adam_ark.md section 3) compare the Ark model, accrued from
several data sets' labels, with models pretrained supervised on one data set's labels. This is that model under
exactly Ark's recipe minus the accrual: the same encoder, projector and views (:class:`~eden_lib.methods.ark.ArkViewConfig`:
one geometric view of the whole render with the student's intensity changes), the same SGD, one linear head on one
site's own labels (``site``: a ``data.sites`` key; unknown labels masked out of the binary cross-entropy), no
teacher, no consistency loss. The exported ``encoder`` is the trained network's (there is no teacher).

So a row of the sites table separates what Ark's accrual adds (``ark`` against ``supervised_site``) from what one
site's labels give on the other sites' tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.ark import ArkNetwork, ArkViewConfig, intensity, shared_geometry
from eden_lib.methods.base import BuildContext, Method, MethodConfigError, config_failure
from eden_lib.methods.supervised import masked_bce


@dataclass(frozen=True)
class SupervisedSiteConfig(ArkViewConfig):
    """``methods.supervised_site``: :class:`ArkViewConfig` and the one site trained on.

    Attributes:
        site: a ``data.sites`` key, e.g. ``hospital_a`` (the ChestX-ray14-layout site).
    """

    site: str = "hospital_a"

    @property
    def sites(self) -> tuple[str, ...]:
        """The prepared sites the pipeline feeds this method: just ``site``."""
        return (self.site,)

    def validate(self, name: str) -> None:
        super().validate(name)
        if not self.site:
            raise config_failure(name, self, "site", "the name of one data.sites entry")


class SupervisedSite(Method):
    """Encoder + projector + one head, trained on one site's labels; exported encoder."""

    name = "supervised_site"
    config_cls = SupervisedSiteConfig
    data: ClassVar[Mapping[int, str]] = {2: "cxr_sites"}

    def __init__(self, cfg: SupervisedSiteConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if len(ctx.site_label_counts) != 1:
            raise MethodConfigError(
                f"supervised_site trains on one site; BuildContext.site_label_counts has {len(ctx.site_label_counts)} "
                f"entries (the pipeline passes the label count of methods.supervised_site.site = {cfg.site!r})"
            )
        self.network = ArkNetwork(networks.encoder_2d(ctx), cfg.projector_dim, cfg.projector_mlp,
                                  ctx.site_label_counts)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``image`` ``(B, 1, R, R)`` renders of the site, ``label`` ``(B, K)`` (NaN = unknown) -> ``loss``."""
        view = intensity(shared_geometry(batch["image"], self.cfg, self.ctx.image_size, generator), self.cfg, generator)
        logits = self.network.omni_heads[0](self.network(view))
        return {"loss": masked_bce(logits, batch["label"][:, : logits.shape[1]])}

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.network.encoder}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
