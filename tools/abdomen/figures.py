"""PNG grids of label maps and (synthetic / real) CT slices: mask | synthetic [| real]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

__all__ = ["label_rgb", "radiological", "save_grid", "SaveSynthesisGridd"]


def label_rgb(label: np.ndarray, num_classes: int = 17) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) colours: background black, body dark grey, organs from the tab20 colour map."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    lut = np.zeros((num_classes, 3), np.float32)
    for i in range(1, num_classes):
        lut[i] = cmap((i - 1) % 20)[:3]
    lut[num_classes - 1] = (0.25, 0.25, 0.25)  # body
    return lut[np.clip(np.asarray(label).round().astype(int), 0, num_classes - 1)]


def radiological(slice_ras: np.ndarray) -> np.ndarray:
    """An axial slice indexed [x, y] in RAS orientation, shown with anterior up and patient right on the left."""
    return np.asarray(slice_ras).T[::-1, ::-1]


def save_grid(
    path: str | Path,
    labels: Sequence[np.ndarray],
    images: Mapping[str, Sequence[np.ndarray]],
    vmin: float,
    vmax: float,
    titles: Sequence[str] | None = None,
    num_classes: int = 17,
) -> Path:
    """Write a grid: one row per slice, columns "mask" then each entry of ``images`` (grey, window vmin..vmax).

    All arrays are 2D slices already in display orientation (see :func:`radiological`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["mask", *images.keys()]
    n = len(labels)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(label_rgb(labels[r], num_classes), interpolation="nearest")
        for c, name in enumerate(images, start=1):
            axes[r, c].imshow(images[name][r], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        for c, name in enumerate(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class SaveSynthesisGridd(MapTransform):
    """Post-transform: save ``<output_dir>/<input stem>_grid.png`` with mask | synthetic for a few slices.

    Args:
        label_key: label volume (1, H, W, D), RAS orientation (before inverting the preprocessing).
        pred_key: synthetic CT volume in HU, same grid.
        output_dir: folder of the PNG.
        num_slices: rows, evenly spaced over the slices that hold an organ.
        a_min, a_max: display window (HU).
    """

    def __init__(
        self,
        label_key: str = "label",
        pred_key: str = "pred",
        output_dir: str = ".",
        num_slices: int = 6,
        a_min: float = -160.0,
        a_max: float = 240.0,
        num_classes: int = 17,
    ) -> None:
        super().__init__([label_key, pred_key])
        self.label_key, self.pred_key = label_key, pred_key
        self.output_dir = Path(output_dir)
        self.num_slices = num_slices
        self.a_min, self.a_max = a_min, a_max
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        lab = convert_to_numpy(d[self.label_key])[0]
        img = convert_to_numpy(d[self.pred_key])[0]
        organ = np.nonzero(((lab > 0) & (lab < self.num_classes - 1)).any(axis=(0, 1)))[0]
        if organ.size == 0:
            organ = np.nonzero((lab > 0).any(axis=(0, 1)))[0]
        if organ.size == 0:
            return d
        ks = np.unique(organ[np.linspace(0, organ.size - 1, min(self.num_slices, organ.size)).round().astype(int)])
        src = d[self.label_key]
        name = "synthesis"
        if isinstance(src, MetaTensor) and src.meta.get("filename_or_obj"):
            name = Path(str(src.meta["filename_or_obj"])).name.replace(".nii.gz", "").replace(".nii", "")
        save_grid(
            self.output_dir / f"{name}_grid.png",
            [radiological(lab[..., k]) for k in ks],
            {"synthetic": [radiological(img[..., k]) for k in ks]},
            self.a_min,
            self.a_max,
            titles=[f"slice {k}" for k in ks],
            num_classes=self.num_classes,
        )
        return d
