"""Sampler settings of ``generate.json`` side by side on one trained LDM (the measurement behind its default).

Every setting generates the same number of pairs from the same seed (the same initial noise, one pair per real
training case) through the bundle's own ``generate.json`` (+ ``paper_sampler.json`` for the LDM's training
schedule, ancestral DDPM over all 1000 timesteps). Quality of a setting = the pair agreement of
:mod:`tools.cardiac.pair_quality` (Dice between each generated label and a real-data segmenter's prediction on
the generated image) and how many of the 8 structures a generated label holds; cost = network calls per
volume (the scheduler's steps; one LDM call per step) and seconds per pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from tools.cardiac.pair_quality import BundleSegmenter, pair_agreement
from tools.data.datalist import load_datalist

__all__ = ["PAPER", "compare_samplers", "fastest_within", "structures_present"]

#: (name, extra delta configs over generate.json, num_inference_steps); the first is the reference
PAPER = ("DDPM 1000 (paper)", ("paper_sampler.json",), 1000)


def structures_present(label_files: Sequence[str | Path], num_classes: int = 9) -> float:
    """Mean number of foreground structures (of ``num_classes - 1``) present in the label maps."""
    counts = [len(set(np.unique(np.asarray(nib.load(str(f)).dataobj)).tolist()) & set(range(1, num_classes)))
              for f in label_files]
    return float(np.mean(counts)) if counts else float("nan")


def compare_samplers(generate: Callable[[Sequence[str], int, Path], None], segmenter: BundleSegmenter,
                     settings: Sequence[tuple[str, Sequence[str], int]], out_dir: str | Path) -> list[dict]:
    """One row per setting: calls per volume, seconds per pair, pair Dice (mean and per structure), structures.

    ``generate(deltas, num_inference_steps, synthetic_dir)`` runs the bundle's generation into ``synthetic_dir``
    (same seed and number of pairs for every setting); ``segmenter`` scores the pairs.
    """
    rows = []
    for name, deltas, steps in settings:
        folder = Path(out_dir) / name.split(" (")[0].replace(" ", "_").lower()
        t0 = time.perf_counter()
        generate(list(deltas), int(steps), folder)
        seconds = time.perf_counter() - t0
        entries = load_datalist(str(folder / "datalist.json"), "training", required_keys=["image", "label"])
        agreement = pair_agreement(segmenter, entries)
        rows.append({"sampler": name, "calls_per_volume": int(steps), "pairs": len(entries),
                     "seconds_per_pair": round(seconds / max(1, len(entries)), 2),
                     "pair_dice": agreement.get("mean"),
                     "pair_dice_per_structure": {k: v for k, v in agreement.items() if k not in ("mean", "per_pair_mean")},
                     "structures_present": round(structures_present([e["label"] for e in entries]), 2)})
    return rows


def fastest_within(rows: Sequence[dict], max_dice_drop: float = 0.01) -> dict | None:
    """The setting with the fewest calls whose pair Dice is at most ``max_dice_drop`` below the first row's."""
    if not rows or rows[0]["pair_dice"] is None:
        return None
    ref = rows[0]["pair_dice"]
    ok = [r for r in rows if r["pair_dice"] is not None and r["pair_dice"] >= ref - max_dice_drop]
    return min(ok, key=lambda r: r["calls_per_volume"]) if ok else None
