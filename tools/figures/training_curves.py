"""Training curves from TensorBoard event files: one panel per scalar tag, one line per run.

    python -m tools.figures.training_curves --logdirs "{'aortadiff small': 'runs/aortadiff_small'}" \
        --tags "['loss', 'val_roi_psnr']" --out docs/aortadiff_training_curves.png

Reads every ``events.out.tfevents*`` file under each log folder (recursively) with TensorBoard's own
reader; a tag missing from every run is an error naming the folders and the tags they have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import fire
import numpy as np

__all__ = ["read_scalars", "plot_curves"]


def read_scalars(logdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar series under ``logdir``: ``{tag: (steps, values)}``, sorted by step (later files win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under '{logdir}'")
    series: dict[str, dict[int, float]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {t: (np.array(sorted(s)), np.array([s[k] for k in sorted(s)])) for t, s in series.items()}


def plot_curves(logdirs: Mapping[str, str], tags: Sequence[str], out: str, smooth: int = 1, title: str = "") -> Path:
    """Plot ``tags`` of every run in ``logdirs`` (``{label: folder}``) into ``out`` (PNG).

    ``smooth`` > 1 applies a trailing moving average of that many points (training losses are noisy).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {label: read_scalars(d) for label, d in logdirs.items()}
    for tag in tags:
        if not any(tag in r for r in runs.values()):
            have = {label: sorted(r) for label, r in runs.items()}
            raise ValueError(f"tag '{tag}' not found in {dict(logdirs)}; available: {have}")
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for label, r in runs.items():
            if tag not in r:
                continue
            steps, values = r[tag]
            if smooth > 1 and len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1 :]
            ax.plot(steps, values, marker="o" if len(values) < 20 else None, ms=3, label=label)
        ax.set_title(tag)
        ax.set_xlabel("iteration / epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


if __name__ == "__main__":
    fire.Fire(plot_curves)
