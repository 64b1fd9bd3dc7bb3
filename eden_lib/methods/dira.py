"""DiRA: discriminative, restorative and adversarial learning (Haghighi et al., CVPR 2022).

CAiD (:mod:`eden_lib.methods.branches.restorative`) plus a PatchGAN discriminator on the restored image,
least-squares GAN, ``L = 1 * L_dis + 10 * L_res + 0.001 * L_adv``; the discriminator has its own Adam (lr 2e-4,
betas (0.5, 0.999)) and takes one step after every generator step (:meth:`DiRA.after_step`). Its optimiser state is
saved with the checkpoint (:meth:`DiRA.auxiliary_optimizers`). Under DDP the discriminator is left out of the
wrapper (it is stepped outside the DDP forward) and its gradients are averaged over ranks before its step.

The two stages: the released recipe trains ``dir`` (= CAiD) for 1,200 epochs, then ``dira`` for 400 from that
checkpoint (optimiser and cosine restart, batch 16). Here one run does both: the first ``warmup_fraction`` of the
optimizer steps (default 0.75 = 1,200 / 1,600 epochs) have no adversarial term and no discriminator step, the rest
have both; batch, optimiser and cosine schedule run on unchanged. The pipeline announces the run's length with
:meth:`set_total_steps`; the step counter is a buffer, so a resumed run continues the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from eden_lib.distributed import average_gradients
from eden_lib.losses import LSGANLoss
from eden_lib.methods.base import BuildContext
from eden_lib.methods.branches.restorative import CAiDConfig, DiscriminativeRestorative
from eden_lib.models.discriminator import PatchDiscriminator


@dataclass(frozen=True)
class DiRAConfig(CAiDConfig):
    """``methods.dira``: CAiD's fields plus the adversarial term and its discriminator.

    Attributes:
        adv_weight: lambda_adv (0.001).
        warmup_fraction: fraction of the optimizer steps without the adversarial term (stage 1; 0.75 = 1,200 of
            1,600 epochs).
        d_lr, d_betas: the discriminator's Adam (2e-4, (0.5, 0.999)).
        d_widths: its four hidden widths (64, 128, 256, 512).
    """

    adv_weight: float = 0.001
    warmup_fraction: float = 0.75
    d_lr: float = 2e-4
    d_betas: tuple[float, ...] = (0.5, 0.999)
    d_widths: tuple[int, ...] = (64, 128, 256, 512)

    def validate_branch(self, name: str) -> None:
        super().validate_branch(name)
        if self.adv_weight < 0:
            raise self.fail(name, "adv_weight", ">= 0")
        if not 0 <= self.warmup_fraction <= 1:
            raise self.fail(name, "warmup_fraction", "a value in [0, 1]")
        if self.d_lr <= 0:
            raise self.fail(name, "d_lr", "> 0")
        if len(self.d_betas) != 2 or not all(0 <= b < 1 for b in self.d_betas):
            raise self.fail(name, "d_betas", "[beta1, beta2] in [0, 1)")
        if len(self.d_widths) != 4 or min(self.d_widths) <= 0:
            raise self.fail(name, "d_widths", "4 widths > 0")


class DiRA(DiscriminativeRestorative):
    """CAiD + a least-squares adversarial game between the restoring U-Net and a PatchGAN discriminator."""

    name = "dira"
    config_cls = DiRAConfig
    steps_done: torch.Tensor

    def __init__(self, cfg: DiRAConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.discriminator = PatchDiscriminator(in_channels=1, widths=tuple(cfg.d_widths))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr,
                                            betas=(cfg.d_betas[0], cfg.d_betas[1]))
        self.gan = LSGANLoss()
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None  # (real, detached fake) for the D step
        self.ddp_ignored_modules = ("discriminator",)  # its own optimiser; gradients averaged in after_step

    def set_total_steps(self, n: int) -> None:
        """The run's optimizer steps (called by the pipeline before training): sets where stage 2 begins."""
        super().set_total_steps(n)
        self.total_steps = n

    def adversarial(self) -> bool:
        """Whether this step is in stage 2 (after ``warmup_fraction`` of the steps)."""
        if self.total_steps is None:
            raise RuntimeError("dira needs the run's length: call set_total_steps(n) before training")
        return int(self.steps_done) >= self.cfg.warmup_fraction * self.total_steps

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out, restored, clean = self.losses(batch, generator)
        out["loss_adv"] = torch.zeros((), device=restored.device)
        self._pair = None
        if self.adversarial():
            # the discriminator's weights enter as constants: the generator's loss leaves no gradient on them
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            out["loss_adv"] = self.gan.generator(functional_call(self.discriminator, frozen, (restored,)))
            out["loss"] = out["loss"] + self.cfg.adv_weight * out["loss_adv"]
            if self.training:  # the D step runs outside autocast, and never after a monitoring pass
                self._pair = (clean.detach().float(), restored.detach().float())
        return out

    def after_step(self) -> None:
        """The branch's update, then (in stage 2) one discriminator step on the last batch; counts the step."""
        super().after_step()
        if self._pair is not None:
            real, fake = self._pair
            d_loss = self.gan.discriminator(self.discriminator(real), self.discriminator(fake))
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            average_gradients(self.discriminator.parameters())  # DDP ignores D: the mean over ranks, by hand
            self.d_optimizer.step()
            self._pair = None
        self.steps_done += 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The generator's parameters: the discriminator has its own optimiser."""
        own = {id(p) for p in self.discriminator.parameters()}
        return [p for p in super().trainable_parameters() if id(p) not in own]

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers besides the main one, checkpointed by the engine."""
        return {"discriminator": self.d_optimizer}
