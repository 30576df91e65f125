"""Ignite's ``EMAHandler`` with the parameter update done by fused multi-tensor operations.

``ignite.handlers.EMAHandler`` updates the EMA copy parameter by parameter in a Python loop
(``ema.mul_(1 - m).add_(p, alpha=m)``: two small kernels per tensor). :class:`FusedEMAHandler` makes the
same two operations over all parameters at once (``torch._foreach_mul_`` / ``torch._foreach_add_``, the
multi-tensor kernels ``torch.optim`` uses), so every EMA weight is the same float as with the stock handler;
momentum, warm-up and buffer handling are the stock handler's. A drop-in ``_target_`` for bundle configs:
``{"_target_": "tools.engines.ema.FusedEMAHandler", "model": "@network", "momentum": ...}``.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine
from ignite.handlers import EMAHandler

__all__ = ["FusedEMAHandler"]


class FusedEMAHandler(EMAHandler):
    """``EMAHandler`` whose update is ``ema = ema * (1 - momentum) + momentum * model`` over all tensors at once."""

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        momentum = getattr(engine.state, name)
        ema = list(self.ema_model.parameters())
        if ema:
            with torch.no_grad():
                torch._foreach_mul_(ema, 1.0 - momentum)
                torch._foreach_add_(ema, list(self.model.parameters()), alpha=momentum)
        if self.handle_buffers == "copy":
            for ema_b, model_b in zip(self.ema_model.buffers(), self.model.buffers()):
                ema_b.data = model_b.data
        elif self.handle_buffers == "update":
            for ema_b, model_b in zip(self.ema_model.buffers(), self.model.buffers()):
                if ema_b.is_floating_point():
                    ema_b.mul_(1.0 - momentum).add_(model_b.data, alpha=momentum)
                else:  # integer buffers (counters) cannot be averaged: copied, as the stock handler does
                    ema_b.data = model_b.data
