"""Self-supervised losses, one per module (MONAI's are wrapped, not copied, where they compute the same thing)."""

from eden_lib.losses.barlow_twins import BarlowTwinsLoss
from eden_lib.losses.dino import DINOLoss
from eden_lib.losses.info_nce import InfoNCELoss, in_batch_info_nce
from eden_lib.losses.lsgan import LSGANLoss
from eden_lib.losses.negative_cosine import SymmetricNegativeCosineLoss, negative_cosine
from eden_lib.losses.purposive_pruner import PurposivePrunerLoss

__all__ = ["BarlowTwinsLoss", "DINOLoss", "InfoNCELoss", "LSGANLoss", "PurposivePrunerLoss",
           "SymmetricNegativeCosineLoss", "in_batch_info_nce", "negative_cosine"]
