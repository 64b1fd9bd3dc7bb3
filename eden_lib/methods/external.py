"""External initialisation: a checkpoint file from outside the study, transferred as if it were a method.

``external`` trains nothing. Built for one dimension, it loads ``methods.external.path_2d`` into the study's 2D
encoder (:func:`~eden_lib.methods.networks.encoder_2d`) or ``path_3d`` into its UNet3D
(:func:`~eden_lib.methods.networks.unet_3d`) through :func:`~eden_lib.checkpoints.load_pretrained`: read with
``weights_only=True``, every key mapped by the layout ``source`` (``auto``: detected) and loaded strictly, so a
missing, unexpected or mis-shaped key is an error that names it. It exports like ``scratch`` (``encoder`` in 2D,
``unet3d`` in 3D), so transfer, embedding and bias treat the file as one more row of the study.

The study network must have the file's geometry: for torchvision's ImageNet ResNet-50 (or an iNat, MoCo, Barlow
Twins, DINO ResNet-50) set ``pretrain.backbone_2d`` to ``{name: resnet50, widths: [64, 128, 256, 512]}``; RGB stem
filters are summed to the study's one grey channel. Relative paths are read from the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from eden_lib import paths
from eden_lib.checkpoints import KEY_MAPS, CheckpointError, load_pretrained
from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext, Method, MethodConfigError

#: the names ``source`` takes: detection, or a layout of :data:`~eden_lib.checkpoints.KEY_MAPS`
SOURCES = ("auto", *sorted(KEY_MAPS))
#: what a method exports per spatial dimension, and what an external file fills
EXPORT = {2: "encoder", 3: "unet3d"}


def weight_file(value: str, key: str) -> Path:
    """The checkpoint file a parameter names, relative paths read from the repository root.

    Args:
        value: the parameter's value (``""``: unset).
        key: its dotted name in ``params.yaml``, for the error.

    Raises:
        MethodConfigError: the parameter is unset, or no file is there (both named, with the resolved path).
    """
    if not value:
        raise MethodConfigError(f"{key} is unset; set it to a checkpoint file (relative to the repository root)")
    path = Path(value)
    path = path if path.is_absolute() else paths.repo_root() / path
    if not path.is_file():
        raise MethodConfigError(f"{key} = {value!r}: no such file ({path})")
    return path


@dataclass(frozen=True)
class ExternalConfig:
    """``methods.external``: which file initialises the study network of each dimension.

    Attributes:
        dims: the dimensions exported (each needs its path).
        path_2d: checkpoint loaded into the 2D encoder (``""``: unset).
        path_3d: checkpoint loaded into the UNet3D (``""``: unset).
        source: the files' layout, one of :data:`SOURCES` (``auto``: :func:`~eden_lib.checkpoints.detect_source`).
    """

    dims: tuple[int, ...] = (2,)
    path_2d: str = ""
    path_3d: str = ""
    source: str = "auto"

    def validate(self, name: str) -> None:
        if not self.dims or not set(self.dims) <= {2, 3} or len(set(self.dims)) != len(self.dims):
            raise MethodConfigError(f"methods.{name}.dims = {list(self.dims)}; expected [2], [3] or [2, 3]")
        if self.source not in SOURCES:
            raise MethodConfigError(f"methods.{name}.source = {self.source!r}; allowed: {', '.join(SOURCES)}")

    def weight_file(self, name: str, dims: int) -> Path:
        """The file of ``dims`` D (:func:`weight_file`; errors name ``methods.<name>.path_<dims>d``)."""
        return weight_file(getattr(self, f"path_{dims}d"), f"methods.{name}.path_{dims}d")


class External(Method):
    """The study network of ``ctx.spatial_dims``, loaded strictly from the configured file; trains nothing."""

    name = "external"
    config_cls = ExternalConfig
    trains = False

    def __init__(self, cfg: ExternalConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        dims = ctx.spatial_dims
        self.net = networks.encoder_2d(ctx) if dims == 2 else networks.unet_3d(ctx)
        path = cfg.weight_file(self.name, dims)
        try:
            #: what :func:`load_pretrained` reports (layout, keys loaded, converted stem, dropped keys)
            self.loaded = load_pretrained(path, self.net, cfg.source)
        except CheckpointError as exc:
            raise CheckpointError(f"methods.{self.name}.path_{dims}d: {exc}") from exc

    def exports(self) -> dict[str, nn.Module]:
        return {EXPORT[self.ctx.spatial_dims]: self.net}
