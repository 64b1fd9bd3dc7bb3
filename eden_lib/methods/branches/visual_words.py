"""Self-classification + self-restoration of visual words: the shared TransVW / Semantic Genesis method, 2D and 3D.

Haghighi et al., "Transferable Visual Words: Exploiting the Semantics of Anatomical Patterns for Self-supervised
Learning", IEEE TMI 2021 (TransVW, :mod:`eden_lib.methods.transvw`), and "Learning Semantics-enriched
Representation via Self-discovery, Self-classification, and Self-restoration", MICCAI 2020 (Semantic Genesis,
:mod:`eden_lib.methods.semantic_genesis`). The released code of the two is the same apart from names
(``reference/genesis_family.md`` §4), so both methods are this module under two names.

Data (``"visual_words"``): the crops of self-discovery (:mod:`eden_lib.data.self_discovery`), ``image`` ``(B, 1,
*size)`` clean, in [0, 1], and ``label`` ``(B,)``, the visual word (class index in ``[0, n_classes)``).

Transformation, inside ``forward`` with the step's generator (§3.3, released PyTorch code): the input is elastically
deformed (:func:`elastic_deform`, alpha 991, sigma 8, in-plane; with ``elastic_rate``, officially always), then gets
exactly one of four Genesis perturbations, each with probability 0.25, from :mod:`eden_lib.transforms.genesis` with
the TransVW counts: local pixel shuffling of only 5 blocks, the Bezier intensity map, in-painting of one box,
out-painting keeping one window (noise-filled as the PyTorch code, or constant-filled as the Keras code:
``painting``). No flips. Targets: the clean, *undeformed* crop (the decoder also undoes the warp)
and the label.

Loss (§3.4): ``lambda_rec * MSE(restored, clean) + lambda_cls * CE(logits, label)`` with lambda_rec 1 and
lambda_cls 0.01; the released cross-entropy on log-softmax outputs is the cross-entropy of the logits. ``forward``
also returns ``loss_rec``, ``loss_cls`` and ``cls_accuracy``.

Networks: 3D, :class:`~eden_lib.models.unet3d.YNet3D` (the Models Genesis UNet3D, study width, plus the PyTorch
``clc_out`` head on the bottleneck, returning logits; §1.2). 2D (no released 2D code): the study ResNet U-Net of
Models Genesis 2D plus a linear head on the globally pooled last encoder stage. Exports as Models Genesis:
``unet3d`` (encoder and decoder, the head left out as the official loader leaves it, §3.6) for 3D; ``encoder`` and
``unet`` for 2D. Optimiser: Adam lr 1e-3; StepLR (gamma 0.5) after ``lr_step_fraction`` of the epochs (released:
every 40 epochs under early stopping with patience 50, as Models Genesis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext, Method, MethodConfigError
from eden_lib.models.unet3d import UNet3D, YNet3D
from eden_lib.transforms.genesis import bezier_intensity, inpaint, local_pixel_shuffle, outpaint
from eden_lib.transforms.keras_painting import keras_inpaint, keras_outpaint

#: the one-of-four perturbations, in the order of their probability fields
PERTURBATIONS = ("shuffle_p", "nonlinear_p", "inpaint_p", "outpaint_p")


@dataclass(frozen=True)
class VisualWordsConfig:
    """``methods.transvw`` / ``methods.semantic_genesis`` (released values, ``genesis_family.md`` section in brackets).

    Attributes:
        dims: spatial dimensions to pretrain (2, 3).
        batch_size: 64 [§3.4, PyTorch; Keras 8].
        lr: Adam learning rate, 1e-3 [§3.4].
        lr_step_fraction: StepLR(gamma 0.5) after this fraction of the epochs [§3.4: StepLR 40 epochs, patience
            50; the Models Genesis translation 0.8].
        lambda_rec, lambda_cls: loss weights 1 and 0.01 [§3.4].
        n_classes: C visual words, 44 [§3.2 item 5, §1.2].
        elastic_rate: probability of the elastic deformation, 1 [§3.3, ``data_augmentation = True``].
        elastic_alpha, elastic_sigma: its scale (voxels) and smoothing, 991 and 8 [§3.3].
        shuffle_p, nonlinear_p, inpaint_p, outpaint_p: the one-of-four perturbation, 0.25 each [§3.3]; a sum below
            1 leaves the rest of the samples unperturbed (the released code has no such option).
        shuffle_blocks: blocks of the local pixel shuffling, 5 [§3.3; Models Genesis 10,000].
        painting: ``"pytorch"`` (noise-filled boxes, the released PyTorch code) or ``"keras"`` (one constant per
            sample, box sides 10-20 voxels of a 64 x 64 x 32 crop, the released Keras code;
            :mod:`eden_lib.transforms.keras_painting`) [§3.3].
    """

    dims: tuple[int, ...] = (2, 3)
    batch_size: int = 64
    lr: float = 1e-3
    lr_step_fraction: float = 0.8
    lambda_rec: float = 1.0
    lambda_cls: float = 0.01
    n_classes: int = 44
    elastic_rate: float = 1.0
    elastic_alpha: float = 991.0
    elastic_sigma: float = 8.0
    shuffle_p: float = 0.25
    nonlinear_p: float = 0.25
    inpaint_p: float = 0.25
    outpaint_p: float = 0.25
    shuffle_blocks: int = 5
    painting: str = "pytorch"

    def fail(self, name: str, key: str, expected: str) -> MethodConfigError:
        """An error naming ``methods.<name>.<key>``, its value and what is allowed."""
        value = getattr(self, key)
        shown = list(value) if isinstance(value, tuple) else value
        return MethodConfigError(f"methods.{name}.{key} = {shown!r}; expected {expected}")

    def validate(self, name: str) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("dims", bool(self.dims) and set(self.dims) <= {2, 3} and len(set(self.dims)) == len(self.dims),
             "a non-empty list of distinct values from [2, 3]"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("lr_step_fraction", 0 < self.lr_step_fraction <= 1, "a fraction in (0, 1]"),
            ("lambda_rec", self.lambda_rec >= 0, ">= 0"),
            ("lambda_cls", self.lambda_cls >= 0, ">= 0"),
            ("n_classes", self.n_classes >= 2, "an integer >= 2 (visual words to classify)"),
            ("elastic_rate", 0 <= self.elastic_rate <= 1, "a probability in [0, 1]"),
            ("elastic_alpha", self.elastic_alpha >= 0, ">= 0 (voxels)"),
            ("elastic_sigma", self.elastic_sigma > 0, "> 0 (voxels)"),
            ("shuffle_blocks", self.shuffle_blocks >= 0, "an integer >= 0"),
            ("painting", self.painting in ("pytorch", "keras"), "'pytorch' or 'keras'"),
            *((key, 0 <= getattr(self, key) <= 1, "a probability in [0, 1]") for key in PERTURBATIONS),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise self.fail(name, key, expected)
        if self.lambda_rec == 0 and self.lambda_cls == 0:
            raise self.fail(name, "lambda_cls", "> 0 when lambda_rec is 0 (the loss would be 0)")
        if sum(getattr(self, key) for key in PERTURBATIONS) > 1 + 1e-9:
            raise self.fail(name, "outpaint_p", f"{' + '.join(PERTURBATIONS)} <= 1 (one perturbation per sample)")


# ------------------------------------------------------------------------------------------ elastic deformation
def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1D Gaussian ``(2r + 1,)`` float64, ``r = int(truncate * sigma + 0.5)`` (SciPy's radius)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter over every spatial axis of ``(B, C, *spatial)``, zeros outside (SciPy
    ``gaussian_filter(mode="constant")``, truncated at 4 sigma). Same shape and dtype."""
    full = gaussian_kernel(sigma)
    centre = full.numel() // 2
    for axis in range(2, field.ndim):
        n = field.shape[axis]
        radius = min(centre, n - 1)  # taps farther than n - 1 only ever see the zero padding
        kernel = full[centre - radius: centre + radius + 1].to(field)
        moved = field.movedim(axis, -1)
        rows = F.conv1d(moved.reshape(-1, 1, n), kernel.view(1, 1, -1), padding=radius)
        field = rows.reshape(moved.shape).movedim(-1, axis)
    return field


def elastic_deform(
    x: torch.Tensor, apply: torch.Tensor, alpha: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """In-plane elastic deformation (Simard et al. 2003, the released TransVW settings of §3.3).

    Per sample, two displacement fields (along the first two spatial axes; none along a 3D crop's depth axis) of
    uniform noise in [-1, 1] over the whole crop, Gaussian-smoothed (``sigma``, zeros outside) and scaled by
    ``alpha`` voxels; the crop is resampled (bi-/trilinear) at the displaced positions, mirrored at the borders
    (SciPy ``reflect``). 2D has no released code: its noise is scaled by the L2 norm of the Gaussian kernel, so the
    field has the statistics of one slice of the 3D field (about 3.8 voxels standard deviation at 991 / 8) instead
    of about five times larger displacements.

    Args:
        x: ``(B, C, *spatial)`` in [0, 1], ``spatial_dims`` 2 or 3.
        apply: ``(B,)`` bool, the samples to deform.
    Returns:
        ``(B, C, *spatial)`` in [0, 1]; samples whose ``apply`` is False unchanged.
    """
    if x.ndim not in (4, 5) or not x.is_floating_point():
        raise ValueError(f"elastic_deform: expected a float (B, C, H, W) or (B, C, H, W, D) tensor, got "
                         f"{x.dtype} {tuple(x.shape)}")
    idx = apply.to(x.device).nonzero().squeeze(1)
    if idx.numel() == 0 or alpha == 0:
        return x.clone()
    sub = x.index_select(0, idx)
    spatial = sub.shape[2:]
    dims = len(spatial)
    noise = torch.rand((idx.numel(), 2, *spatial), generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    noise = noise * float(gaussian_kernel(sigma).square().sum().sqrt()) ** (3 - dims)
    shift = gaussian_smooth(noise, sigma) * alpha  # (b, 2, *spatial), voxels along spatial axes 0 and 1
    coords = []
    for axis, n in enumerate(spatial):
        position = torch.arange(n, device=x.device, dtype=x.dtype).view([n if a == axis else 1 for a in range(dims)])
        position = position + shift[:, axis] if axis < 2 else position.expand(idx.numel(), *spatial)
        coords.append((2 * position + 1) / n - 1)  # voxel centres under align_corners=False
    grid = torch.stack(coords[::-1], dim=-1)  # grid_sample's last dimension runs from the last axis to the first
    warped = F.grid_sample(sub, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x.index_copy(0, idx, warped.clamp_(0.0, 1.0))


# ----------------------------------------------------------------------------------------------------- the method
def _unet3d_view(ynet: YNet3D) -> UNet3D:
    """A :class:`UNet3D` made of ``ynet``'s own encoder and decoder modules (shared, not copied): its state dict is
    exactly the UNet3D key set, so transfer loads it strictly; the ``clc_out`` head is not part of it."""
    with torch.device("meta"):
        view = UNet3D(ynet.in_channels, ynet.out_tr.final_conv.out_channels, ynet.base_width, ynet.bn_mode,
                      ynet.upsample)
    for name in [name for name, _ in view.named_children()]:
        setattr(view, name, getattr(ynet, name))
    return view


class VisualWordsMethod(Method):
    """Restore the clean visual word from its transformed crop and classify it (TransVW / Semantic Genesis).

    Subclasses set ``name`` and ``config_cls`` only.
    """

    data = {2: "visual_words", 3: "visual_words"}

    def __init__(self, cfg: VisualWordsConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.spatial_dims == 2:
            self.unet = networks.unet_2d(ctx, out_channels=1)
            self.cls_head = networks.head(self.unet.encoder.out_dim, cfg.n_classes)
        else:
            self.ynet3d = YNet3D(in_channels=1, out_channels=1, base_width=ctx.unet3d_width,
                                 n_classes=cfg.n_classes, head="pytorch", head_activation="none")

    def transform(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The network input: elastic deformation, then one of the four perturbations. ``(B, 1, *size)`` in [0, 1]
        -> same shape in [0, 1] (computed in full precision, also under the engine's autocast)."""
        cfg = self.cfg
        b = clean.shape[0]
        with torch.no_grad(), torch.autocast(clean.device.type, enabled=False):
            deform = torch.rand(b, generator=generator, device=clean.device) < cfg.elastic_rate
            x = elastic_deform(clean, deform, cfg.elastic_alpha, cfg.elastic_sigma, generator)
            u = torch.rand(b, generator=generator, device=clean.device, dtype=torch.float64)
            edges = torch.tensor([getattr(cfg, key) for key in PERTURBATIONS], dtype=torch.float64,
                                 device=clean.device).cumsum(0)
            choice = torch.bucketize(u, edges, right=True)  # 0..3, or 4 (none) past the summed probabilities
            x = local_pixel_shuffle(x, choice == 0, generator, n_blocks=cfg.shuffle_blocks)
            x = bezier_intensity(x, choice == 1, generator)
            if cfg.painting == "keras":
                return keras_outpaint(keras_inpaint(x, choice == 2, generator), choice == 3, generator)
            x = inpaint(x, choice == 2, generator, max_blocks=1, continue_rate=1.0)
            return outpaint(x, choice == 3, generator, max_windows=1)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, *size)`` -> (restored ``(B, 1, *size)`` in (0, 1), class logits ``(B, n_classes)``)."""
        if self.ctx.spatial_dims == 3:
            return self.ynet3d(x)
        if any(s % 32 for s in x.shape[2:]):
            raise ValueError(f"{self.name}: 2D crops need sides divisible by 32, got {tuple(x.shape[2:])}")
        stages = self.unet.encoder.stages(x)
        restored = torch.sigmoid(self.unet.segmentation_head(self.unet.decoder(stages)))
        return restored, self.cls_head(stages[-1].flatten(2).mean(dim=2))

    def _check_batch(self, image: torch.Tensor, label: torch.Tensor) -> None:
        dims, n_classes = self.ctx.spatial_dims, self.cfg.n_classes
        if image.ndim != dims + 2 or image.shape[1] != 1:
            raise ValueError(f"{self.name}: batch['image'] must be (B, 1, *size) with {dims} spatial axes, got "
                             f"{tuple(image.shape)}")
        low, high = (float(v) for v in torch.aminmax(image))
        if low < 0 or high > 1:
            raise ValueError(f"{self.name}: batch['image'] must hold clean crops in [0, 1], got min {low:.4g}, "
                             f"max {high:.4g}")
        if label.shape != (image.shape[0],) or label.is_floating_point() or label.dtype == torch.bool:
            raise ValueError(f"{self.name}: batch['label'] must be ({image.shape[0]},) integer class indices, got "
                             f"{label.dtype} {tuple(label.shape)}")
        low, high = (int(v) for v in torch.aminmax(label))
        if low < 0 or high >= n_classes:
            bad = high if high >= n_classes else low
            raise ValueError(f"{self.name}: visual-word label {bad} is outside [0, {n_classes}); "
                             f"methods.{self.name}.n_classes = {n_classes} must equal the number of self-discovered "
                             f"classes")

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        clean, label = batch["image"], batch["label"]
        self._check_batch(clean, label)
        restored, logits = self.outputs(self.transform(clean, generator))
        loss_rec = F.mse_loss(restored.float(), clean.float())
        loss_cls = F.cross_entropy(logits.float(), label.long())
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == label).float().mean()
        return {"loss": self.cfg.lambda_rec * loss_rec + self.cfg.lambda_cls * loss_cls,
                "loss_rec": loss_rec.detach(), "loss_cls": loss_cls.detach(), "cls_accuracy": accuracy}

    def exports(self) -> dict[str, nn.Module]:
        if self.ctx.spatial_dims == 2:
            return {"encoder": self.unet.encoder, "unet": self.unet}
        return {"unet3d": _unet3d_view(self.ynet3d)}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr)

    def configure_scheduler(
        self, optimizer: torch.optim.Optimizer, epochs: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        step = max(1, int(self.cfg.lr_step_fraction * epochs))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=0.5)
