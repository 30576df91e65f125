"""Rank-0-only logging and saving under ``torch.distributed`` (model-zoo multi-GPU pattern).

Every rank keeps the handlers that change training (validation, early stopping, checkpoint *loading*,
latent scale factor, LR schedules); only rank 0 keeps those that log or save.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from monai.handlers import CheckpointSaver, MetricsSaver, StatsHandler, TensorBoardImageHandler, TensorBoardStatsHandler

__all__ = ["handlers_for_rank"]

_RANK0_ONLY = (StatsHandler, TensorBoardStatsHandler, TensorBoardImageHandler, CheckpointSaver, MetricsSaver)


def handlers_for_rank(handlers: Sequence | None) -> list:
    """All ``handlers`` on rank 0 (or without a process group); on other ranks drop loggers and savers."""
    handlers = list(handlers or [])
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, _RANK0_ONLY)]
