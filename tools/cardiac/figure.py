"""Figure of the cardiac LDM bundle (``docs/cardiac_sample.png``).

Top row: generated image + label pairs (``generate.json`` output), the image and its label overlaid on the
axial slice with the most heart voxels. Bottom row: one real test case, its ground truth and the
segmentations written by ``inference.json`` for each model given.

    python -m tools.cardiac.figure --synthetic_dir runs/cardiac_ldm_ssl/synthetic \
        --datalist cache/phantoms/heart/datalist.json \
        --segmentations "{'LDM+SSL': 'runs/seg_ldm_ssl', 'scratch': 'runs/seg_scratch'}" --out docs/cardiac_sample.png

Slices are shown in radiological convention (patient right on the image left, anterior up).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from tools.data.datalist import load_datalist
from tools.figures.slices import most_structures_slice

NAMES = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "MYO", 6: "AO", 7: "PA", 8: "LAA"}


def _lps(img: nib.Nifti1Image) -> np.ndarray:
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(("L", "P", "S")))
    return nib.orientations.apply_orientation(np.asarray(img.dataobj), ornt)


def _overlay(ax, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    import matplotlib.pyplot as plt

    ax.imshow(image.T, cmap="gray", vmin=-200, vmax=600)  # the bundle's window (common.json a_min, a_max)
    if label is not None:
        masked = np.ma.masked_where(label.T == 0, label.T)
        ax.imshow(masked, cmap=plt.get_cmap("tab10", 9), vmin=-0.5, vmax=8.5, alpha=0.55, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _find_seg(folder: Path, case_id: str) -> Path:
    hits = sorted(p for p in folder.rglob("*_seg.nii.gz") if case_id in str(p))
    if not hits:
        raise FileNotFoundError(f"no '*_seg.nii.gz' for case '{case_id}' under '{folder}' (run inference.json)")
    return hits[0]


def main(synthetic_dir: str, datalist: str, segmentations: dict | None = None, out: str = "docs/cardiac_sample.png",
         n_synthetic: int = 3, case_index: int = 0, split: str = "test") -> str:
    """Write the figure; ``segmentations`` maps a model name to the folder of its inference outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth = json.loads((Path(synthetic_dir) / "datalist.json").read_text())["training"][:n_synthetic]
    case = load_datalist(datalist, split, required_keys=["image", "label"])[case_index]
    segmentations = dict(segmentations or {})
    ncols = max(2 * len(synth), 2 + len(segmentations))
    fig, axes = plt.subplots(2, ncols, figsize=(2.2 * ncols, 5.6))
    for ax in axes.ravel():
        ax.axis("off")
    for i, entry in enumerate(synth):
        img = _lps(nib.load(Path(synthetic_dir) / entry["image"]))
        lab = _lps(nib.load(Path(synthetic_dir) / entry["label"]))
        k = most_structures_slice(lab)
        _overlay(axes[0, 2 * i], img[:, :, k], None, f"{entry['case_id']} image")
        _overlay(axes[0, 2 * i + 1], img[:, :, k], lab[:, :, k], f"{entry['case_id']} label")
    img = _lps(nib.load(case["image"]))
    gt = _lps(nib.load(case["label"]))
    k = most_structures_slice(gt)
    cid = Path(str(case.get("case_id", Path(case["image"]).parent))).name
    _overlay(axes[1, 0], img[:, :, k], None, f"real {cid}")
    _overlay(axes[1, 1], img[:, :, k], gt[:, :, k], "ground truth")
    for j, (name, folder) in enumerate(segmentations.items()):
        seg = _lps(nib.load(_find_seg(Path(folder), cid)))
        _overlay(axes[1, 2 + j], img[:, :, k], seg[:, :, k], name)
    handles = [matplotlib.patches.Patch(color=plt.get_cmap("tab10", 9)(i), label=n) for i, n in NAMES.items()]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.suptitle("cardiac_ldm_ssl: generated image+label pairs (top); test case segmentation (bottom)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    fig.subplots_adjust(hspace=0.25)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    import fire

    fire.Fire(main)
