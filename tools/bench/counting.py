"""Count network calls: a transparent wrapper that a sampler calls instead of the network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CallCounter", "ZeroNetwork"]


class CallCounter(nn.Module):
    """``CallCounter(network)(*args, **kwargs)`` calls ``network`` and records the call.

    ``module`` is the wrapped network (as for DDP), so samplers that read attributes such as
    ``prediction_type`` or ``has_mask_head`` through ``getattr(net, "module", net)`` see the real network.

    Attributes:
        calls: number of forward calls since the last :meth:`reset`.
        batch_sizes: first dimension of the first argument of every call.
        kwargs: keyword arguments of every call (for checks such as ``image_only``).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.module = network
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.kwargs: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        self.kwargs.append({k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str))})
        return self.module(x, *args, **kwargs)


class ZeroNetwork(nn.Module):
    """A network of no cost with a given output layout, for counting the calls of long schedules.

    Returns zeros of shape ``(B, out_channels, *spatial)`` of the input; attributes given as keywords
    (``prediction_type="sample"``, ``has_mask_head=True``) are set on the module so samplers treat it as
    the network it stands for. ``image_only=True`` returns ``image_channels`` channels.
    """

    def __init__(self, out_channels: int, image_channels: int | None = None, **attributes: Any) -> None:
        super().__init__()
        self.out_channels = int(out_channels)
        self.image_channels = int(image_channels if image_channels is not None else out_channels)
        for k, v in attributes.items():
            setattr(self, k, v)

    def forward(self, x: torch.Tensor, *args: Any, image_only: bool = False, **kwargs: Any) -> torch.Tensor:
        c = self.image_channels if image_only else self.out_channels
        return x.new_zeros((x.shape[0], c, *x.shape[2:]))
