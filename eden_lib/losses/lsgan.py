"""Least-squares GAN losses (Mao et al., ICCV 2017, arXiv:1611.04076) as DiRA uses them (Haghighi et al., CVPR 2022).

Generator: ``MSE(D(fake), 1)``; discriminator: ``0.5 * [MSE(D(real), 1) + MSE(D(fake), 0)]`` (DiRA's 0.5 factor),
means over every patch of a PatchGAN map. The MSE terms are MONAI's ``PatchAdversarialLoss`` with the
least-squares criterion and no output activation, which computes exactly ``MSE(D(x), target)``.
"""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from torch import nn


class LSGANLoss(nn.Module):
    """Both sides of the least-squares adversarial game; inputs are raw discriminator maps ``(B, 1, h, w)``."""

    def __init__(self) -> None:
        super().__init__()
        self.mse = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def generator(self, d_fake: torch.Tensor) -> torch.Tensor:
        """``MSE(D(G(x)), 1)``: the restored image should be judged real."""
        return self.mse(d_fake.float(), target_is_real=True, for_discriminator=False)

    def discriminator(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """``0.5 * [MSE(D(real), 1) + MSE(D(fake), 0)]``; ``d_fake`` must come from a detached fake."""
        real = self.mse(d_real.float(), target_is_real=True, for_discriminator=True)
        fake = self.mse(d_fake.float(), target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)
