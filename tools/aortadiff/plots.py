"""Figures of the AortaDiff evaluation: Bland-Altman plot of lumen diameters, Dice box plot and the experiment's
grid of every variant on held-out cases (PNG)."""

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


def _volume(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _thrombus_slice_crop(entry: dict, crop_mm: float) -> tuple[np.ndarray, np.ndarray, int, tuple[slice, slice]]:
    """(aorta, lumen, k, box) of a labeled case: ``k`` its slice with the most thrombus, ``box`` the in-plane
    crop of ``crop_mm`` around the aorta's centre on that slice."""
    import nibabel as nib

    aorta, lumen = _volume(entry["aorta"]) > 0, _volume(entry["lumen"]) > 0
    k = int(np.argmax((aorta & ~lumen).sum((0, 1))))
    spacing = nib.load(str(entry["aorta"])).header.get_zooms()[:2]
    ii, jj = np.nonzero(aorta[:, :, k])
    half = [max(4, int(crop_mm / 2 / s)) for s in spacing]
    ci, cj = int(ii.mean()), int(jj.mean())
    return aorta, lumen, k, (slice(max(0, ci - half[0]), ci + half[0]), slice(max(0, cj - half[1]), cj + half[1]))


def _mask_contours(ax, lumen: np.ndarray, thrombus: np.ndarray) -> None:
    """Thrombus (yellow) then lumen (red) contours of 2D masks; the lumen on top: it shares a border with the thrombus."""
    for m, color in ((thrombus, "yellow"), (lumen, "red")):
        sl = np.rot90(m).astype(float)
        if sl.any():
            ax.contour(sl, levels=[0.5], colors=color, linewidths=1.0)


def variant_grid_png(records: Sequence[dict], test_entries: Sequence[dict], path: str | Path, labels: dict[str, str],
                     without_masks: Sequence[str] = (), kinds: Sequence[str] = ("regular", "thin_thrombus", "calcified_wall", "low_contrast"),
                     window: tuple[float, float] = (-200.0, 600.0), crop_mm: float = 90.0) -> None:
    """One held-out case per kind (first labeled case of each), its slice with the most thrombus, cropped
    to ``crop_mm`` around the aorta: NCCT | real CECT with reference masks | every row's synthetic CECT with
    its predicted lumen (red) and thrombus (yellow) contours (none for the rows in ``without_masks``).
    ``records``: the experiment's evaluation records (those of the smallest seed are shown;
    ``overrides.output_dir``/predictions/<case_id>/ holds each row's NIfTI outputs); ``labels``: row -> title,
    in column order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = min(r["seed"] for r in records) if records else None
    by_row = {r["row"]: r for r in records if r["seed"] == seed}
    names = [n for n in labels if n in by_row]
    cases = []
    for kind in kinds:
        entry = next((e for e in test_entries if e.get("kind", "regular") == kind and e.get("lumen")), None)
        if entry is not None:
            cases.append(entry)
    if not cases or not names:
        raise ValueError("variant_grid_png: no labeled held-out case or no evaluated row to show")
    fig, axes = plt.subplots(len(cases), 2 + len(names), figsize=(1.7 * (2 + len(names)), 1.9 * len(cases)),
                             squeeze=False)

    for r, e in enumerate(cases):
        aorta, lumen, k, (bi, bj) = _thrombus_slice_crop(e, crop_mm)
        box = (bi, bj, k)

        def show(ax, img, lum, thr, title):
            ax.imshow(np.rot90(img[box]), cmap="gray", vmin=window[0], vmax=window[1])
            _mask_contours(ax, lum[box], thr[box])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)

        none = np.zeros_like(aorta)
        show(axes[r, 0], _volume(e["ncct"]), none, none, "NCCT")
        show(axes[r, 1], _volume(e["cect"]), lumen, aorta & ~lumen, "real CECT + reference")
        axes[r, 0].set_ylabel(f"{e['case_id']}\n{e.get('kind', 'regular')}", fontsize=7)
        for c, name in enumerate(names):
            pdir = Path(by_row[name]["overrides"]["output_dir"]) / "predictions" / Path(str(e["case_id"])).name
            masks = (none, none) if name in without_masks else \
                (_volume(pdir / "lumen.nii.gz") > 0, _volume(pdir / "thrombus.nii.gz") > 0)
            show(axes[r, 2 + c], _volume(pdir / "synthetic_cect.nii.gz"), *masks, labels[name])
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def uncertainty_png(entries: Sequence[dict], prediction_dir: str | Path, path: str | Path, scores: dict | None = None,
                    window: tuple[float, float] = (-200.0, 600.0), crop_mm: float = 90.0) -> None:
    """Uncertainty maps of a few held-out cases (one row each; slice with the most thrombus, cropped to
    ``crop_mm`` around the aorta): real CECT with reference lumen (red) / thrombus (yellow) | synthetic CECT
    (mean of the samples) with the predicted ones | CECT std over the samples (HU) | entropy of the lumen /
    thrombus votes (bits), read from ``prediction_dir/<case_id>/``. ``scores``: case id -> text for the row label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not entries:
        raise ValueError("uncertainty_png: no case to show")
    fig, axes = plt.subplots(len(entries), 4, figsize=(8.4, 2.1 * len(entries)), squeeze=False)
    for r, e in enumerate(entries):
        cid = Path(str(e["case_id"])).name
        pdir = Path(prediction_dir) / cid
        aorta, lumen, k, (bi, bj) = _thrombus_slice_crop(e, crop_mm)
        box = (bi, bj, k)
        p_l, p_t = _volume(pdir / "lumen.nii.gz") > 0, _volume(pdir / "thrombus.nii.gz") > 0
        std, ent = _volume(pdir / "std_hu.nii.gz"), _volume(pdir / "mask_entropy.nii.gz")
        panels = [("real CECT + reference", _volume(e["cect"]), (lumen, aorta & ~lumen)),
                  ("synthetic CECT (mean) + predicted", _volume(pdir / "synthetic_cect.nii.gz"), (p_l, p_t)),
                  ("CECT std over samples (HU)", std, None), ("lumen/thrombus vote entropy (bits)", ent, None)]
        for c, (title, img, masks) in enumerate(panels):
            ax = axes[r, c]
            if masks is None:
                vmax = 1.0 if c == 3 else max(1e-6, float(np.percentile(std[aorta], 99)))
                im = ax.imshow(np.rot90(img[box]), cmap="magma", vmin=0, vmax=vmax)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
                ax.contour(np.rot90(aorta[box]).astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            else:
                ax.imshow(np.rot90(img[box]), cmap="gray", vmin=window[0], vmax=window[1])
                _mask_contours(ax, masks[0][box], masks[1][box])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
        label = f"{cid}\n{e.get('kind', 'regular')}" + (f"\n{scores[cid]}" if scores and cid in scores else "")
        axes[r, 0].set_ylabel(label, fontsize=6)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
