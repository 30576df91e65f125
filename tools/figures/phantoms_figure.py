"""Figure of the CT phantoms: a middle slice of each anatomy (``docs/phantoms.png``).

    python -m tools.figures.phantoms_figure --out docs/phantoms.png [--seed 0 --size 256 --slices 64]

Slices are shown in radiological convention (patient right on the image left, anterior up) whatever
the stored orientation: the arrays are reoriented to LPS with nibabel before display.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tools.data.phantoms import make_case


def _radiological(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(nx, ny, nz) array in any axis-aligned orientation -> LPS-ordered array (display: ``arr[:, :, k].T``)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(("L", "P", "S")))
    return nib.orientations.apply_orientation(arr, ornt)


def _slice(case: dict, key: str, k: int | None = None) -> np.ndarray:
    vol = _radiological(case["arrays"][key], case["affine"])
    k = vol.shape[2] // 2 if k is None else k
    return vol[:, :, k].T


def figure(out: str | Path = "docs/phantoms.png", seed: int = 0, size: int = 256, slices: int = 64, case: int = 0) -> str:
    """Render the figure: aaa NCCT / CECT / masks (at the widest aorta slice), abdomen image + label
    (at a slice near the kidneys), heart image + label (middle slice); returns the png path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    aaa = make_case("aaa", seed, case, size, slices, "LPS")
    abd = make_case("abdomen", seed, case, size, slices, "RAS")
    heart = make_case("heart", seed, case, size, slices, "LPS")
    k_aaa = int(np.argmax(aaa["arrays"]["aorta"].sum(axis=(0, 1))))
    kidney = (abd["arrays"]["label"] == 2).sum(axis=(0, 1)) + (abd["arrays"]["label"] == 10).sum(axis=(0, 1))
    k_abd = int(np.argmax(kidney))
    if abd["orientation"] == "LPS":
        pass
    cmap = ListedColormap(plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:16])
    cmap.colors[0] = (0, 0, 0, 1)
    win = {"cmap": "gray", "vmin": -160, "vmax": 240}
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.6))
    axes = axes.ravel()
    masks = _slice(aaa, "aorta", k_aaa).astype(int) + _slice(aaa, "lumen", k_aaa)
    panels = [
        (_slice(aaa, "ncct", k_aaa), win, f"aaa NCCT (slice {k_aaa})"),
        (_slice(aaa, "cect", k_aaa), win, "aaa CECT"),
        (masks, {"cmap": ListedColormap(["black", "gold", "red"]), "vmin": 0, "vmax": 2}, "aaa masks: thrombus (gold), lumen (red)"),
        (_slice(abd, "image", k_abd), win, f"abdomen image (slice {k_abd})"),
        (_slice(abd, "label", k_abd), {"cmap": cmap, "vmin": 0, "vmax": 15, "interpolation": "nearest"}, "abdomen label (AMOS ids)"),
        (_slice(heart, "image"), {"cmap": "gray", "vmin": -300, "vmax": 600}, "heart CTA"),
        (_slice(heart, "label"), {"cmap": cmap, "vmin": 0, "vmax": 15, "interpolation": "nearest"}, "heart label (1 LA .. 8 LAA)"),
        (_slice(aaa, "cect", slices // 2 if k_aaa != slices // 2 else 0).T.T, win, "aaa CECT, another slice"),
    ]
    for ax, (img, kw, title) in zip(axes, panels):
        ax.imshow(img, **kw)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("tools.data.phantoms (radiological view: patient right on image left; W400/L40, heart W900/L150)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return str(out)


if __name__ == "__main__":
    import fire

    fire.Fire(figure)
