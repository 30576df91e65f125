"""Sampler settings of ``generate.json`` side by side on one trained LDM (the measurement behind its default).

Every setting generates the same number of pairs from the same seed (one pair per real training case) through
the bundle's own ``generate.json`` with the setting's keys (``scheduler#_target_``, ``num_inference_steps``).
Cost: network calls per volume (one LDM call per scheduler step) and seconds per pair. Quality:

- ``nearest_real_label_dice``: for each generated label, the mean structure Dice with the most similar real
  training label, averaged over the pairs (real labels among themselves, leave one out, give the ceiling). It
  scores whether a generated label has a heart's layout; it is the criterion of :func:`fastest_within`;
- ``pair_dice``: Dice between each generated label and a real-data segmenter's prediction on the generated image
  (:mod:`tools.cardiac.pair_quality`): whether the label sits on its image. Only as good as that segmenter;
- ``structures_present``: how many of the 8 structures a generated label holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tools.cardiac.pair_quality import BundleSegmenter, pair_agreement, per_structure_dice
from tools.data.datalist import load_datalist

__all__ = ["PAPER", "compare_samplers", "ddim", "fastest_within", "nearest_label_dice", "structures_present"]

#: (name, keys over generate.json); the reference of the comparison: the LDM's training schedule, all 1000 steps
PAPER = ("DDPM 1000 (paper)", {"scheduler#_target_": "DDPMScheduler", "num_inference_steps": 1000})


def ddim(steps: int) -> tuple[str, dict]:
    """The setting ``DDIM <steps>`` (deterministic DDIM over ``steps`` of the training timesteps)."""
    return f"DDIM {steps}", {"scheduler#_target_": "DDIMScheduler", "num_inference_steps": int(steps)}


def structures_present(labels: Sequence[np.ndarray], num_classes: int = 9) -> float:
    """Mean number of foreground structures (of ``num_classes - 1``) present in the label maps."""
    counts = [len(set(np.unique(lab).tolist()) & set(range(1, num_classes))) for lab in labels]
    return float(np.mean(counts)) if counts else float("nan")


def nearest_label_dice(labels: Sequence[np.ndarray], references: Sequence[np.ndarray],
                       leave_one_out: bool = False) -> float:
    """Mean over ``labels`` of the best mean-structure Dice against any of ``references`` (same grid).

    ``leave_one_out``: ``labels`` are ``references`` themselves; each is compared with the others only.
    """
    best = []
    for i, lab in enumerate(labels):
        pool = [r for j, r in enumerate(references) if not (leave_one_out and i == j)]
        scores = [np.nanmean(per_structure_dice(lab, r)) for r in pool]
        best.append(max((s for s in scores if not np.isnan(s)), default=0.0))
    return float(np.mean(best)) if best else float("nan")


def _centre_block(label: np.ndarray, depth: int) -> np.ndarray:
    start = max(0, (label.shape[2] - depth) // 2)
    return label[:, :, start:start + depth]


def compare_samplers(generate: Callable[[Mapping[str, Any], Path], None], segmenter: BundleSegmenter,
                     settings: Sequence[tuple[str, Mapping[str, Any]]], out_dir: str | Path) -> dict:
    """Rows of calls, seconds, quality per setting, plus the real labels' own leave-one-out ceiling.

    ``generate(keys, synthetic_dir)`` runs the bundle's generation with ``keys`` into ``synthetic_dir`` (same
    seed and number of pairs for every setting); ``segmenter`` scores the pairs and gives the real training
    labels on the model grid (the centre block of the generated depth).
    """
    rows = []
    real = None
    for name, keys in settings:
        folder = Path(out_dir) / name.split(" (")[0].replace(" ", "_").lower()
        t0 = time.perf_counter()
        generate(dict(keys), folder)
        seconds = time.perf_counter() - t0
        entries = load_datalist(str(folder / "datalist.json"), "training", required_keys=["image", "label"])
        labels = [np.asarray(nib.load(str(e["label"])).dataobj).astype(np.int64) for e in entries]
        if real is None:
            depth = labels[0].shape[2] if labels else 0
            real = [_centre_block(segmenter.model_grid(e)[1], depth) for e in
                    load_datalist(segmenter.datalist, "training", required_keys=["image", "label"])]
        agreement = pair_agreement(segmenter, entries)
        rows.append({"sampler": name, "keys": dict(keys), "calls_per_volume": int(keys["num_inference_steps"]),
                     "pairs": len(entries), "seconds_per_pair": round(seconds / max(1, len(entries)), 2),
                     "nearest_real_label_dice": round(nearest_label_dice(labels, real), 4),
                     "pair_dice": agreement.get("mean"),
                     "pair_dice_per_structure": {k: v for k, v in agreement.items() if k not in ("mean", "per_pair_mean")},
                     "structures_present": round(structures_present(labels), 2)})
    ceiling = round(nearest_label_dice(real, real, leave_one_out=True), 4) if real else None
    return {"rows": rows, "real_labels_leave_one_out": ceiling}


def fastest_within(rows: Sequence[dict], max_drop: float = 0.01, key: str = "nearest_real_label_dice") -> dict | None:
    """The setting with the fewest calls whose ``key`` is at most ``max_drop`` below the first row's."""
    if not rows or rows[0].get(key) is None:
        return None
    ref = rows[0][key]
    ok = [r for r in rows if r.get(key) is not None and r[key] >= ref - max_drop]
    return min(ok, key=lambda r: r["calls_per_volume"]) if ok else None
