"""The discriminative + restorative family of CAiD and DiRA, 2D, on any of three siamese branches.

CAiD (Taher et al., MIDL 2022, "CAiD: Context-Aware instance Discrimination"): the study ResNet U-Net; its encoder
is the discriminative branch's online encoder and its decoder restores view 1's clean crop;
``L = 1 * L_dis + 10 * L_res`` with ``L_res`` the MSE (the released code's ``dir`` mode). DiRA
(:mod:`eden_lib.methods.dira`) adds an adversarial term on top of :class:`DiscriminativeRestorative`.

``ssl`` picks the branch (``moco_v2`` as released, ``barlow_twins``, ``simsiam``: the paper's other flavours, whose
settings are unpublished, so each keeps its own method's defaults). As in the released code both views are
corrupted (:mod:`eden_lib.transforms.restoration`: in-painting 0.30, out-painting 0.05, local shuffle 0.30, none
0.35), so ``L_dis`` is computed on corrupted views, and the restoration target is view 1's crop before jitter, blur,
flip and corruption (the decoder also undoes those). The MoCo key network is a momentum *encoder* only: the released
code's momentum decoder is never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext
from eden_lib.methods.branches.barlow_twins import BarlowTwinsBranch, BarlowTwinsConfig
from eden_lib.methods.branches.moco import MoCoV2Branch, MoCoV2Config
from eden_lib.methods.branches.simsiam import SimSiamBranch, SimSiamConfig
from eden_lib.methods.branches.two_view import Discriminative, TwoViewMethod
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.transforms.restoration import RestorationCorruption, corrupt

#: ``ssl`` -> (the config class whose fields the branch reads, the branch)
BRANCHES: dict[str, tuple[type, type[Discriminative]]] = {
    "moco_v2": (MoCoV2Config, MoCoV2Branch),
    "barlow_twins": (BarlowTwinsConfig, BarlowTwinsBranch),
    "simsiam": (SimSiamConfig, SimSiamBranch),
}


@dataclass(frozen=True)
class CAiDConfig(MoCoV2Config, BarlowTwinsConfig, SimSiamConfig):
    """``methods.caid``: every branch's fields (only the ``ssl`` one's are read and checked), the loss weights and
    the corruption probabilities. Optimiser as released: SGD lr 0.03, momentum 0.9, weight decay 1e-4, batch 256;
    ``bn_splits`` 4 (DiRA / CAiD ran on 4 GPUs)."""

    batch_size: int = 256
    lr: float = 0.03
    weight_decay: float = 1e-4
    scale: tuple[float, ...] = (0.45, 1.0)
    bn_splits: int = 4
    ssl: str = "moco_v2"
    dis_weight: float = 1.0
    res_weight: float = 10.0
    inpaint_p: float = 0.30
    outpaint_p: float = 0.05
    shuffle_p: float = 0.30

    def validate_branch(self, name: str) -> None:
        if self.ssl not in BRANCHES:
            raise self.fail(name, "ssl", f"one of {sorted(BRANCHES)}")
        BRANCHES[self.ssl][0].validate_branch(self, name)
        for key in ("dis_weight", "res_weight"):
            if getattr(self, key) < 0:
                raise self.fail(name, key, ">= 0")
        for key in ("inpaint_p", "outpaint_p", "shuffle_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise self.fail(name, key, "a probability in [0, 1]")
        if self.inpaint_p + self.outpaint_p + self.shuffle_p > 1 + 1e-9:
            raise self.fail(name, "shuffle_p", "inpaint_p + outpaint_p + shuffle_p <= 1")

    def corruption(self) -> RestorationCorruption:
        return RestorationCorruption(inpaint_p=self.inpaint_p, outpaint_p=self.outpaint_p, shuffle_p=self.shuffle_p)


class DiscriminativeRestorative(TwoViewMethod):
    """Discriminative branch on the U-Net encoder + restoration of view 1's clean crop by the U-Net decoder."""

    def __init__(self, cfg: CAiDConfig, ctx: BuildContext) -> None:
        encoder = networks.encoder_2d(ctx)
        super().__init__(cfg, ctx, encoder)
        self.unet = networks.unet_2d(ctx, out_channels=1, encoder=encoder)
        self.corruption = cfg.corruption()

    def make_branch(self, encoder: ResNetEncoder) -> Discriminative:
        return BRANCHES[self.cfg.ssl][1](encoder, self.cfg)

    def restore(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Encoder feature maps of a view -> restored image ``(B, 1, S, S)`` in [0, 1] (sigmoid)."""
        return torch.sigmoid(self.unet.segmentation_head(self.unet.decoder(stages)))

    def losses(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """``({"loss", "loss_dis", "loss_res", ...}, restored (B, 1, S, S), clean target (B, 1, S, S))``."""
        with torch.no_grad():
            view1, view2, clean1 = self.two_views(batch["image"], generator)
            view1 = corrupt(view1, self.corruption, generator)[0]
            view2 = corrupt(view2, self.corruption, generator)[0]
        stages1 = self.discriminative.stages(view1)
        restored = self.restore(stages1)
        out = self.discriminative.loss(view1, view2, generator, stages1)
        out["loss_res"] = F.mse_loss(restored.float(), clean1.float())
        out["loss"] = self.cfg.dis_weight * out["loss_dis"] + self.cfg.res_weight * out["loss_res"]
        return out, restored, clean1

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.losses(batch, generator)[0]

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.unet.encoder, "unet": self.unet}

