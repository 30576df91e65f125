"""Figures of the AortaDiff evaluation: Bland-Altman plot of lumen diameters and Dice box plot (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def bland_altman_png(pred_mm: Sequence[float], ref_mm: Sequence[float], path: str | Path,
                     title: str = "Lumen max diameter (per slice)") -> None:
    """Bland-Altman: mean of the two measurements (mm) vs difference pred - ref (mm), bias and 95% limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, r = np.asarray(pred_mm, float), np.asarray(ref_mm, float)
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    fig, ax = plt.subplots(figsize=(5, 4))
    if len(p):
        mean, diff = (p + r) / 2, p - r
        bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.scatter(mean, diff, s=8, alpha=0.6)
        for y, style, lab in [(bias, "-", f"bias {bias:.2f} mm"), (bias + 1.96 * sd, "--", f"+1.96 SD {bias + 1.96 * sd:.2f}"),
                              (bias - 1.96 * sd, "--", f"-1.96 SD {bias - 1.96 * sd:.2f}")]:
            ax.axhline(y, color="k", linestyle=style, linewidth=1, label=lab)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no slice with a reference lumen", ha="center", transform=ax.transAxes)
    ax.set_xlabel("mean of predicted and reference diameter (mm)")
    ax.set_ylabel("predicted - reference (mm)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def dice_boxplot_png(groups: dict[str, Sequence[float]], path: str | Path, title: str = "Dice per slice") -> None:
    """Box plot of Dice values per structure (NaNs dropped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    data = [np.asarray(groups[n], float)[np.isfinite(np.asarray(groups[n], float))] for n in names]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.boxplot([d if len(d) else [np.nan] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(d)})" for n, d in zip(names, data)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
