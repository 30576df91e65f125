"""Which axial slice of a label volume a figure shows."""

from __future__ import annotations

import numpy as np

__all__ = ["most_structures_slice"]


def most_structures_slice(label: np.ndarray) -> int:
    """Index along the last axis of the slice holding the most distinct labelled structures (ties: most labelled voxels).

    Chosen for multi-structure labels (the cardiac chambers): the slice with the most foreground can be a
    degenerate one, e.g. an edge slice of a generated volume labelled in full with one structure.
    """
    lab = np.asarray(label)
    flat = lab.reshape(-1, lab.shape[-1])
    counts = [(np.unique(col[col > 0]).size, int((col > 0).sum())) for col in flat.T]
    return max(range(len(counts)), key=counts.__getitem__)
