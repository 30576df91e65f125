"""Training progress bar: Ignite's ``ProgressBar`` with the running loss, shown only on an interactive terminal.

Used as a MONAI engine handler (anything with ``attach(engine)``) in the bundles' ``train#handlers``:
``{"_target_": "tools.engines.progress.InteractiveProgressBar"}``. In CI logs, files and on ranks > 0
it attaches nothing, so the log stays the ``StatsHandler``'s.
"""

from __future__ import annotations

import sys
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["InteractiveProgressBar"]


class InteractiveProgressBar:
    """Attach ``ignite.handlers.ProgressBar`` (iterations of each epoch, postfix ``loss``) when interactive.

    Args:
        enabled: ``None`` (default) shows the bar when stdout is a terminal and this is rank 0;
            ``True``/``False`` force it on or off.
        output_key: key of the scalar shown from ``engine.state.output`` (a dict or MONAI's decollated list).
        every: advance the bar (and read the loss, a host sync on a GPU) every ``every`` iterations only;
            the bundles pass their ``log_interval``.
    """

    def __init__(self, enabled: bool | None = None, output_key: str = "loss", every: int = 1) -> None:
        if int(every) < 1:
            raise ValueError(f"InteractiveProgressBar: every must be >= 1, got {every}")
        self.enabled = enabled
        self.output_key = output_key
        self.every = int(every)
        self.bar: ProgressBar | None = None

    def _should_show(self) -> bool:
        if self.enabled is not None:
            return bool(self.enabled)
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        return rank0 and sys.stdout.isatty()

    def _scalar(self, output: Any) -> dict[str, float]:
        if isinstance(output, list) and output and isinstance(output[0], dict):
            output = output[0]
        if isinstance(output, dict) and self.output_key in output:
            return {self.output_key: float(output[self.output_key])}
        return {}

    def attach(self, engine: Engine) -> None:
        if not self._should_show():
            return
        self.bar = ProgressBar(persist=False)
        self.bar.attach(engine, output_transform=self._scalar, event_name=Events.ITERATION_COMPLETED(every=self.every))
