"""`make demo`'s overview picture (``runs/demo/overview.png``): one row per bundle, from the files its run wrote.

- aortadiff_cect: a test case at the slice with the most reference thrombus: NCCT | synthetic CECT |
  real CECT | predicted lumen (red) / thrombus (yellow) | reference;
- abdomen_semantic_synthesis: the two evaluated test slices whose masks hold the most organs, each organ
  mask | synthetic slice | real slice (the evaluation's ``samples_model.npz`` of the trained network);
- cardiac_ldm_ssl: two generated image + label pairs, then the held-out test case: image | ground truth |
  segmentation by the fine-tuned network, each at the slice with the most labelled structures.

Slices are shown in radiological convention (patient right on the image left, anterior up); CT windows
are the bundles' own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from tools.data.datalist import load_datalist
from tools.figures.slices import most_structures_slice

__all__ = ["write_overview"]

Panel = tuple[np.ndarray, np.ndarray | None, str, tuple[float, float], str]  # image, labels, title, window, cmap


def _ras(path: str | Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).astype(np.float32)


def _show(x: np.ndarray) -> np.ndarray:
    """RAS [x, y] slice -> display array (rows anterior to posterior, columns patient right to left)."""
    return np.asarray(x).T[::-1, ::-1]


def _aortadiff_row(out: Path, dataset_dir: Path) -> list[Panel]:
    case = load_datalist(dataset_dir / "datalist.json", "test", required_keys=["ncct", "cect", "aorta", "lumen"])[0]
    pred_dir = out / "eval" / "predictions" / str(case["case_id"])
    ncct, cect = _ras(case["ncct"]), _ras(case["cect"])
    aorta, lumen = _ras(case["aorta"]) > 0, _ras(case["lumen"]) > 0
    ref = np.where(lumen & aorta, 1, np.where(aorta, 2, 0))
    syn, pred = _ras(pred_dir / "synthetic_cect.nii.gz"), _ras(pred_dir / "label.nii.gz")
    k = int(np.argmax((ref == 2).sum(axis=(0, 1))))
    w = (-200.0, 600.0)
    return [(ncct[..., k], None, "NCCT (input)", w, ""), (syn[..., k], None, "synthetic CECT", w, ""),
            (cect[..., k], None, "real CECT", w, ""), (syn[..., k], pred[..., k], "predicted lumen / thrombus", w, "aorta"),
            (cect[..., k], ref[..., k], "reference lumen / thrombus", w, "aorta")]


def _abdomen_row(out: Path, dataset_dir: Path) -> list[Panel]:
    z = np.load(out / "evaluate" / "samples_model.npz")
    lab, fake, real = z["label"], z["synthetic"], z["real"]
    w = (-160.0, 240.0)

    def hu(x: np.ndarray) -> np.ndarray:
        return (np.clip(x, -1, 1) + 1) / 2 * (w[1] - w[0]) + w[0]

    # the two evaluated slices whose masks hold the most organs (the conditioning input, not the output, decides)
    picks = sorted(sorted(range(lab.shape[0]), key=lambda i: -len(np.unique(lab[i][lab[i] > 0])))[:2])
    panels: list[Panel] = []
    for i in picks:
        panels += [(lab[i].astype(np.float32), lab[i], "organ mask (input)", (0.0, 1.0), "organs"),
                   (hu(fake[i]), None, "synthetic CT", w, ""), (hu(real[i]), None, "real CT", w, "")]
    return panels


def _cardiac_row(out: Path, dataset_dir: Path) -> list[Panel]:
    synth_dir = out / "synthetic"
    synth = json.loads((synth_dir / "datalist.json").read_text())["training"][:2]
    w = (-200.0, 600.0)  # the bundle's cardiac CTA window (common.json a_min, a_max)
    panels: list[Panel] = []
    for i, e in enumerate(synth):
        img, lab = _ras(synth_dir / e["image"]), _ras(synth_dir / e["label"])
        k = most_structures_slice(lab)
        if i == 0:
            panels.append((img[..., k], None, "generated image", w, ""))
        panels.append((img[..., k], lab[..., k], "generated image + label" if i == 0 else "another generated pair", w,
                       "heart"))
    case = load_datalist(dataset_dir / "datalist.json", "test", required_keys=["image", "label"])[0]
    cid = str(case.get("case_id", Path(case["image"]).parent.name))
    img, gt = _ras(case["image"]), _ras(case["label"])
    seg_files = sorted((out / "segmentation").rglob("*_seg.nii.gz"))
    seg_files = [p for p in seg_files if cid in str(p)] or seg_files
    seg = _ras(seg_files[0])
    k = most_structures_slice(gt)
    panels += [(img[..., k], None, f"held-out {cid}", w, ""), (img[..., k], gt[..., k], "ground truth", w, "heart"),
               (img[..., k], seg[..., k], "fine-tuned segmentation", w, "heart")]
    return panels


ROWS: dict[str, Callable[[Path, Path], list[Panel]]] = {
    "aortadiff_cect": _aortadiff_row,
    "abdomen_semantic_synthesis": _abdomen_row,
    "cardiac_ldm_ssl": _cardiac_row,
}


def _draw(ax, panel: Panel) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    img, lab, title, (lo, hi), kind = panel
    if kind == "organs":  # the mask itself, coloured by class id, background black
        shown = _show(lab)
        ax.imshow(np.zeros_like(shown), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_where(shown == 0, shown), cmap=plt.get_cmap("tab20", 20), vmin=-0.5, vmax=19.5,
                  interpolation="nearest")
    else:
        ax.imshow(_show(img), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if lab is not None:
            cmap = {"aorta": ListedColormap(["red", "yellow"]), "heart": plt.get_cmap("tab10", 9)}[kind]
            lo_hi = {"aorta": (0.5, 2.5), "heart": (-0.5, 8.5)}[kind]
            shown = _show(lab)
            ax.imshow(np.ma.masked_where(shown == 0, shown), cmap=cmap, vmin=lo_hi[0], vmax=lo_hi[1], alpha=0.5,
                      interpolation="nearest")
    ax.set_title(title, fontsize=8)


def write_overview(out_dirs: dict[str, Path], dataset_dirs: dict[str, Path], bundles: Sequence[str], path: Path,
                   captions: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """Draw the rows of ``bundles`` whose outputs exist into ``path``; returns it and {bundle: why a row is missing}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[Panel]]] = []
    missing: dict[str, str] = {}
    for b in bundles:
        try:
            rows.append((b, ROWS[b](out_dirs[b], dataset_dirs[b])))
        except (FileNotFoundError, KeyError, IndexError, ValueError, OSError) as e:
            missing[b] = f"{type(e).__name__}: {e}"
    ncols = max([len(p) for _, p in rows], default=1)
    fig, axes = plt.subplots(max(1, len(rows)), ncols, figsize=(1.9 * ncols, 2.35 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    for i, (b, panels) in enumerate(rows):
        for j, p in enumerate(panels):
            _draw(axes[i, j], p)
        text = b + ("\n" + captions[b] if captions and captions.get(b) else "")
        axes[i, 0].set_ylabel(text, fontsize=8, rotation=90, labelpad=6)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, missing
