"""Adam-v2's composability and decomposability losses (Hosseinzadeh Taher et al., "Representing part-whole
hierarchies in foundation models by learning localizability, composability, and decomposability from anatomy via
self-supervision", CVPR 2024, arXiv 2404.15672).

With f_s / f_t the student / teacher pooled backbone features of a whole W and its parts P_1..P_4 (no DINO head):

* composability (parts -> whole): ``L_comp = MSE(normalize(h_C([f_s(P_1); ...; f_s(P_4)])), sg(normalize(f_t(W))))``,
* decomposability (whole -> parts):
  ``L_dec = 1/4 sum_i MSE(slice_i(normalize_X(h_D(f_s(W)))), sg(normalize(f_t(P_i))))``
  with ``slice_i`` the i-th D-block of the 4D-dimensional output.

``normalize_X`` is ``"faithful"`` (the release: one L2 normalisation of the whole 4D vector, so a slice has norm
~1/2 against unit targets and the loss cannot reach 0; its minimiser is still every slice pointing along its target,
``slice_i = t_i / 2``, where the loss is ``1 / (4D)``) or ``"per_part"`` (each D-slice normalised: the loss reaches 0
for perfect directions). MSE is the mean over elements (``torch.nn.MSELoss``' default; the reference notes name no
other reduction), so ``L = (2 - 2 cos) / D`` per sample: small next to the DINO loss at D = 2,048. The mean over the
four parts of per-part MSEs equals the MSE over all ``4 * B * D`` elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the ``norm`` values of :func:`decomposability_loss`
DECOMPOSE_NORMS: tuple[str, ...] = ("faithful", "per_part")


def composability_loss(composed: torch.Tensor, teacher_whole: torch.Tensor) -> torch.Tensor:
    """``composed`` ``h_C`` output ``(B, D)``, ``teacher_whole`` ``f_t(W)`` ``(B, D)`` (no gradient) -> scalar."""
    return F.mse_loss(F.normalize(composed, dim=-1), F.normalize(teacher_whole.detach(), dim=-1))


def decomposability_loss(decomposed: torch.Tensor, teacher_parts: torch.Tensor, norm: str = "faithful") -> torch.Tensor:
    """``decomposed`` ``h_D`` output ``(B, 4D)``, ``teacher_parts`` ``f_t(P_i)`` ``(4, B, D)`` (no gradient) -> scalar.

    ``norm``: ``"faithful"`` normalises ``decomposed`` over all 4D values, ``"per_part"`` each D-slice.
    """
    n_parts, _, dim = teacher_parts.shape
    if norm == "faithful":
        predicted = F.normalize(decomposed, dim=-1).unflatten(-1, (n_parts, dim))
    elif norm == "per_part":
        predicted = F.normalize(decomposed.unflatten(-1, (n_parts, dim)), dim=-1)
    else:
        raise ValueError(f"decompose norm {norm!r}; expected one of {list(DECOMPOSE_NORMS)}")
    return F.mse_loss(predicted, F.normalize(teacher_parts.detach(), dim=-1).transpose(0, 1))
