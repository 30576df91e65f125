"""Pick a fixed number of evenly spaced slice entries per case (for quick validation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def evenly_spaced_slices(entries: Sequence[dict], per_case: int | None, case_key: str = "case_id",
                         require_keys: Sequence[str] = ()) -> list[dict]:
    """From slice entries (see ``tools.data.transforms.slice_entries``) keep ``per_case`` evenly spaced
    ones per case (all when ``per_case`` is None or <= 0); entries lacking one of ``require_keys``
    (e.g. ``lumen`` for unlabeled cases) are dropped."""
    by_case: dict[str, list[dict]] = {}
    for e in entries:
        if all(k in e for k in require_keys):
            by_case.setdefault(str(e.get(case_key, "")), []).append(e)
    out: list[dict] = []
    for items in by_case.values():
        if per_case and 0 < per_case < len(items):
            idx = np.unique(np.linspace(0, len(items) - 1, per_case).round().astype(int))
            items = [items[i] for i in idx]
        out.extend(items)
    return out
