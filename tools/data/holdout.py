"""Seeded hold-out of a validation fraction from a list of training entries (cases, not slices).

The cardiac LDM paper validates on a 10% split of its training cases for early stopping. MONAI's
``partition_dataset`` rounds 10% of fewer than 10 cases down to an empty split; this keeps at least one
validation case whenever there are two or more cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["holdout_split"]


def holdout_split(entries: Sequence[dict], fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split ``entries`` into (training, validation) with ``max(1, round(fraction * n))`` validation entries.

    Raises:
        ValueError: fewer than two entries, or ``fraction`` outside (0, 1).
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    entries = list(entries)
    if len(entries) < 2:
        raise ValueError(f"need at least 2 training entries to hold out a validation split, got {len(entries)}")
    n_val = min(len(entries) - 1, max(1, int(round(fraction * len(entries)))))
    order = np.random.default_rng(seed).permutation(len(entries))
    val_idx = set(order[:n_val].tolist())
    train = [e for i, e in enumerate(entries) if i not in val_idx]
    val = [e for i, e in enumerate(entries) if i in val_idx]
    return train, val
