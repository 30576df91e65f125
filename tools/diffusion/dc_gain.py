"""DC gain of an eps-prediction network: how much of the spatial mean of x_t reaches its eps output.

For eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar) the right gain is 1 / sqrt(1 - abar), about 1 at high t. A
network with a lower gain reads the mean of its starting noise as signal: its x_0 estimate at t moves by
(1 - gain) * mean(x_t) / sqrt(abar), large where sqrt(abar) is small, so samples started from noise of positive
mean come out bright. Measured by a central difference of two inputs that differ only by a constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["eps_dc_gain", "spatial_mean"]


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, 1, ..., 1) mean over the spatial axes."""
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@torch.no_grad()
def eps_dc_gain(
    network: torch.nn.Module,
    condition: torch.Tensor,
    timesteps: Sequence[int],
    image_channels: int = 1,
    offset: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DC gain of the eps output, (len(timesteps), B): d mean(eps) / d mean(x_t) per sample.

    The network is called as the samplers call it, ``network(cat([x_t, condition], 1), t)``, with x_t a zero-mean
    Gaussian draw shifted by ``-offset`` and ``+offset``; the gain is the change of the mean of the first
    ``image_channels`` output channels divided by ``2 * offset``.
    """
    shape = (condition.shape[0], image_channels, *condition.shape[2:])
    z = torch.randn(shape, generator=generator, device=condition.device)
    z = z - spatial_mean(z)
    gains = []
    for t in timesteps:
        tt = torch.full((shape[0],), int(t), dtype=torch.long, device=condition.device)
        low, high = (
            spatial_mean(network(torch.cat([z + s * offset, condition], 1), tt)[:, :image_channels]).flatten(1).mean(1)
            for s in (-1.0, 1.0)
        )
        gains.append((high - low) / (2 * offset))
    return torch.stack(gains)
