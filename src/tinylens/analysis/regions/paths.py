"""Points between activations: the interpolation paths and the plane of a 2-D slice."""

from __future__ import annotations

import torch
from jaxtyping import Float


def interpolation_path(
    a: Float[torch.Tensor, "pair d"],
    b: Float[torch.Tensor, "pair d"],
    alphas: Float[torch.Tensor, " step"],
    mode: str,
    mean: Float[torch.Tensor, " d"],
) -> Float[torch.Tensor, "pair step d"]:
    """Points x(α) from ``a`` to ``b`` for each α.

    ``linear``: (1 − α)·a + α·b. ``arc``: the linear point moved along its ray from ``mean`` to
    ``a``'s distance from it, so the path keeps ‖x(α) − mean‖ = ‖a − mean‖ (its end is b's
    direction from the mean at a's distance). ``slerp``: the direction turned along the great
    circle from a's to b's while the norm goes linearly from ‖a‖ to ‖b‖ (both ends exact).
    """
    al = alphas[None, :, None]
    tiny = torch.finfo(a.dtype).tiny
    linear = (1 - al) * a[:, None] + al * b[:, None]
    if mode == "linear":
        return linear
    if mode == "arc":
        radius = (a - mean).norm(dim=-1)[:, None, None]
        offset = linear - mean
        norm = offset.norm(dim=-1, keepdim=True)
        return mean + offset * (radius / norm.clamp_min(tiny))
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(tiny), b / nb.clamp_min(tiny)
    cos = (ua * ub).sum(-1).clamp(-1, 1)
    theta = torch.arccos(cos)[:, None, None]  # [pair, 1, 1]
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1 - al, torch.sin((1 - al) * theta) / safe)
    wb = torch.where(small, al, torch.sin(al * theta) / safe)
    direction = wa * ua[:, None] + wb * ub[:, None]
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return direction * ((1 - al) * na[:, None] + al * nb[:, None])


def plane_basis(
    a: Float[torch.Tensor, " d"], b: Float[torch.Tensor, " d"], c: Float[torch.Tensor, " d"]
) -> tuple[Float[torch.Tensor, " d"], Float[torch.Tensor, " d"], float]:
    """The plane through ``a``, ``b`` and ``c``: ``u = b − a``, ``w`` = the part of ``c − a``
    orthogonal to ``u``, and C's coordinate along ``u`` (so a = (0, 0), b = (1, 0), c = (α_c, 1)).

    Raises:
        ValueError: ``a`` = ``b``, or ``c`` on the line through them (no plane).
    """
    u = b - a
    uu = float(u.dot(u))
    if uu == 0.0:
        raise ValueError("A and B have the same activation")
    alpha_c = float((c - a).dot(u)) / uu
    w = (c - a) - alpha_c * u
    if float(w.norm()) <= 1e-6 * (uu**0.5):
        raise ValueError("C's activation lies on the line through A's and B's")
    return u, w, alpha_c


def plane_points(
    a: Float[torch.Tensor, " d"],
    u: Float[torch.Tensor, " d"],
    w: Float[torch.Tensor, " d"],
    alphas: Float[torch.Tensor, " n_alpha"],
    betas: Float[torch.Tensor, " n_beta"],
) -> Float[torch.Tensor, "n_beta n_alpha d"]:
    """``a + α·u + β·w`` on the grid (rows β, columns α)."""
    return a + alphas[None, :, None] * u + betas[:, None, None] * w
