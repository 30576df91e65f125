"""Per-structure Dice table of whole-heart segmentation in the layout of Hu et al., Table 1.

Columns: ``Average, AO, LAA, LA, LV, MYO, PA, RA, RV``. A structure that is absent from every test case
(e.g. LAA in public data sets without it) is reported as ``None`` (CSV: empty) and left out of the average
instead of failing. Math here; files and the bar chart in :func:`save_dice_table`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["CARDIAC_STRUCTURES", "TABLE1_ORDER", "dice_table", "save_dice_table"]

CARDIAC_STRUCTURES: dict[int, str] = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "MYO", 6: "AO", 7: "PA", 8: "LAA"}
TABLE1_ORDER: tuple[str, ...] = ("Average", "AO", "LAA", "LA", "LV", "MYO", "PA", "RA", "RV")


def dice_table(per_case: np.ndarray, structure_names: Sequence[str] = tuple(CARDIAC_STRUCTURES.values()),
               order: Sequence[str] = TABLE1_ORDER) -> dict[str, float | None]:
    """Mean Dice per structure (NaN entries = structure absent in that case are skipped) and their average.

    Args:
        per_case: ``(N, S)`` Dice of N cases for the S structures in ``structure_names`` order (ids 1..S).
    Returns:
        ``{name: mean or None}`` in ``order``; ``"Average"`` is the mean over the structures present.
    """
    per_case = np.asarray(per_case, dtype=float)
    if per_case.ndim != 2 or per_case.shape[1] != len(structure_names):
        raise ValueError(f"per-case Dice must be (cases, {len(structure_names)}), got shape {per_case.shape}")
    means: dict[str, float | None] = {}
    for j, name in enumerate(structure_names):
        col = per_case[:, j]
        col = col[np.isfinite(col)]
        means[name] = float(col.mean()) if col.size else None
    present = [v for v in means.values() if v is not None]
    means["Average"] = float(np.mean(present)) if present else None
    return {name: means.get(name) for name in order}


def save_dice_table(table: Mapping[str, float | None], out_dir: str | Path, per_case: np.ndarray | None = None,
                    case_ids: Sequence[str] | None = None,
                    structure_names: Sequence[str] = tuple(CARDIAC_STRUCTURES.values()),
                    title: str = "Dice on the test split", prefix: str = "dice") -> dict[str, Path]:
    """Write ``<prefix>_table.csv``, ``<prefix>_table.json`` (with per-case values) and ``<prefix>_bar.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(table)
    paths = {"csv": out / f"{prefix}_table.csv", "json": out / f"{prefix}_table.json", "png": out / f"{prefix}_bar.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case"] + names)
        w.writerow(["mean"] + ["" if table[n] is None else f"{table[n]:.4f}" for n in names])
        if per_case is not None:
            ids = list(case_ids) if case_ids is not None else [str(i) for i in range(len(per_case))]
            col = {s: j for j, s in enumerate(structure_names)}
            for cid, row in zip(ids, np.asarray(per_case, dtype=float)):
                vals = []
                for n in names:
                    v = np.nanmean(row) if n == "Average" and np.isfinite(row).any() else (
                        row[col[n]] if n in col else np.nan)
                    vals.append("" if not np.isfinite(v) else f"{v:.4f}")
                w.writerow([cid] + vals)
    payload = {"order": names, "mean": dict(table)}
    if per_case is not None:
        payload["per_case"] = {
            (case_ids[i] if case_ids is not None else str(i)): {
                s: (None if not np.isfinite(v) else float(v)) for s, v in zip(structure_names, row)}
            for i, row in enumerate(np.asarray(per_case, dtype=float))}
    paths["json"].write_text(json.dumps(payload, indent=2))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    vals = [0.0 if table[n] is None else table[n] for n in names]
    bars = ax.bar(names, vals, color=["#444444"] + ["#3b7dd8"] * (len(names) - 1))
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01,
                "absent" if table[n] is None else f"{table[n]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("Dice")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths
