"""Write AortaDiff's inference products next to each other, on the input's exact grid.

Per case, in ``output_dir/<case_id>/``: ``synthetic_cect.nii.gz`` (HU, float32), ``lumen.nii.gz``,
``thrombus.nii.gz``, ``label.nii.gz`` (0 background, 1 lumen, 2 thrombus; uint8), ``preview.png``
(NCCT | synthetic CECT | masks of a few slices), and with ``num_samples > 1`` the uncertainty maps
(:mod:`tools.aortadiff.uncertainty`): ``std_hu.nii.gz`` (per-voxel standard deviation of the samples' CECT,
HU), ``lumen_vote.nii.gz`` (fraction of samples voting lumen), ``mask_entropy.nii.gz`` (entropy of the
lumen / thrombus votes, bits) and ``uncertainty.json`` (per-case ``image_std_hu`` and ``mask_entropy``, the
``uncertainty_score`` of the chosen ``uncertainty_measure`` and, given ``uncertainty_threshold``,
``low_confidence``: score above the threshold; a flagged case is also logged as a warning). Every NIfTI gets the affine (and s/qform codes) of the input NCCT file; shapes are
checked against it. Existing files are never replaced unless ``overwrite``. A case is written into a
temporary folder next to its final one and then moved in by renames, so a failure or a kill never leaves a
half-written case folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from tools.aortadiff.uncertainty import MEASURES
from tools.engines.output_guard import refuse_overwrite

logger = logging.getLogger(__name__)

OUTPUTS = {"synthetic_cect": np.float32, "lumen": np.uint8, "thrombus": np.uint8, "pred": np.uint8, "std_hu": np.float32,
           "lumen_vote": np.float32, "mask_entropy": np.float32}
FILE_NAMES = {"synthetic_cect": "synthetic_cect.nii.gz", "lumen": "lumen.nii.gz", "thrombus": "thrombus.nii.gz",
              "pred": "label.nii.gz", "std_hu": "std_hu.nii.gz", "lumen_vote": "lumen_vote.nii.gz",
              "mask_entropy": "mask_entropy.nii.gz"}
#: written only with num_samples > 1
UNCERTAINTY_MAPS = ("std_hu", "lumen_vote", "mask_entropy")


def case_outputs(output_dir: str | Path, case_id: str, num_samples: int = 1, preview: bool = True) -> list[Path]:
    """The files inference writes for one case (what the output guard checks before sampling)."""
    out = Path(output_dir) / Path(str(case_id)).name
    names = [FILE_NAMES[k] for k in ("synthetic_cect", "lumen", "thrombus", "pred")]
    if num_samples > 1:
        names += [FILE_NAMES[k] for k in UNCERTAINTY_MAPS] + ["uncertainty.json"]
    if preview:
        names.append("preview.png")
    return [out / n for n in names]


def move_into(tmp: Path, out: Path) -> None:
    """Move the files of the finished temporary folder ``tmp`` into ``out``: one rename of the folder when
    ``out`` does not exist yet, else one atomic ``os.replace`` per file; ``tmp`` is removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def save_like(arr: np.ndarray, ref: nib.Nifti1Image, path: Path, dtype) -> None:
    """Save ``arr`` with ``ref``'s affine and s/qform codes (shape must equal ``ref.shape[:3]``)."""
    if arr.shape != ref.shape[:3]:
        raise ValueError(f"output '{path}' has shape {arr.shape}, expected the input's {ref.shape[:3]}")
    img = nib.Nifti1Image(arr.astype(dtype), ref.affine)
    img.header.set_qform(ref.affine, code=int(ref.header["qform_code"]) or 1)
    img.header.set_sform(ref.affine, code=int(ref.header["sform_code"]) or 1)
    img.header.set_xyzt_units(*ref.header.get_xyzt_units())
    nib.save(img, str(path))


def preview_png(ncct_hu: np.ndarray, cect_hu: np.ndarray, lumen: np.ndarray, thrombus: np.ndarray, path: Path,
                window: tuple[float, float] = (-200.0, 600.0), n_slices: int = 4, std_hu: np.ndarray | None = None,
                real_cect_hu: np.ndarray | None = None,
                ref_masks: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Grid of up to ``n_slices`` axial slices with aorta: NCCT | synthetic CECT | [real CECT] | masks |
    [reference masks over the real CECT] | [std]. Volumes (H, W, D) in HU / {0, 1}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has = np.nonzero((lumen > 0).any((0, 1)) | (thrombus > 0).any((0, 1)))[0]
    if len(has) == 0:
        has = np.arange(ncct_hu.shape[2])
    idx = has[np.unique(np.linspace(0, len(has) - 1, min(n_slices, len(has))).round().astype(int))]
    cols = [("NCCT", ncct_hu, "gray"), ("synthetic CECT", cect_hu, "gray")]
    if real_cect_hu is not None:
        cols.append(("real CECT", real_cect_hu, "gray"))
    cols.append(("predicted lumen (red) / thrombus (yellow)", (lumen, thrombus, cect_hu), "masks"))
    if ref_masks is not None:
        cols.append(("reference lumen / thrombus", (ref_masks[0], ref_masks[1],
                                                   real_cect_hu if real_cect_hu is not None else ncct_hu), "masks"))
    if std_hu is not None:
        cols.append(("std (HU)", std_hu, "magma"))
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(2.6 * len(cols), 2.6 * len(idx)), squeeze=False)
    for r, k in enumerate(idx):
        for c, (title, vol, cmap) in enumerate(cols):
            ax = axes[r, c]
            ax.axis("off")
            if cmap == "masks":
                lum, thr, base = vol
                ax.imshow(np.rot90(base[:, :, k]), cmap="gray", vmin=window[0], vmax=window[1])
                over = np.zeros(lum.shape[:2] + (4,))
                over[lum[:, :, k] > 0] = (1, 0, 0, 0.5)
                over[thr[:, :, k] > 0] = (1, 1, 0, 0.5)
                ax.imshow(np.rot90(over))
            elif cmap == "magma":
                ax.imshow(np.rot90(vol[:, :, k]), cmap=cmap, vmin=0)
            else:
                ax.imshow(np.rot90(vol[:, :, k]), cmap=cmap, vmin=window[0], vmax=window[1])
            if r == 0:
                ax.set_title(title, fontsize=8)
        axes[r, 0].text(2, 8, f"slice {k}", color="w", fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


class WriteAortaDiffOutputsd(MapTransform):
    """Postprocessing transform that writes one case (channel-first arrays on the input grid).

    Args:
        output_dir: root folder; one sub-folder per ``case_key``.
        ref_key: key holding the input NCCT file path (its affine is copied).
        num_samples: > 1 also writes the uncertainty maps and ``uncertainty.json``.
        overwrite: replace existing outputs.
        uncertainty_measure: the per-case score (:data:`tools.aortadiff.uncertainty.MEASURES`).
        uncertainty_threshold: flag ``low_confidence`` above it (None: no flag).
    """

    def __init__(self, output_dir: str, ref_key: str = "ncct_path", case_key: str = "case_id",
                 num_samples: int = 1,
                 window: tuple[float, float] = (-200.0, 600.0), overwrite: bool = False, preview: bool = True,
                 uncertainty_measure: str = "mask_entropy", uncertainty_threshold: float | None = None) -> None:
        super().__init__(list(OUTPUTS), allow_missing_keys=True)
        self.output_dir = Path(output_dir)
        self.ref_key, self.case_key = ref_key, case_key
        self.num_samples = int(num_samples)
        self.window = (float(window[0]), float(window[1]))
        self.overwrite = overwrite
        self.preview = preview
        if uncertainty_measure not in MEASURES:
            raise ValueError(f"uncertainty_measure must be one of {sorted(MEASURES)}, got {uncertainty_measure!r}")
        self.measure = uncertainty_measure
        self.threshold = None if uncertainty_threshold is None else float(uncertainty_threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ref_path = d.get(self.ref_key)
        if ref_path is None and hasattr(d.get("image"), "meta"):  # e.g. MONAI Label: only the image path is known
            ref_path = d["image"].meta.get("filename_or_obj")
        if not ref_path:
            logger.warning("WriteAortaDiffOutputsd: no input file path (key '%s'); nothing written", self.ref_key)
            return d
        ref_path = ref_path[0] if isinstance(ref_path, (list, tuple)) else ref_path
        ref = nib.load(str(ref_path))
        case = d.get(self.case_key, Path(str(ref_path)).name.split(".")[0])
        case = case[0] if isinstance(case, (list, tuple)) else str(case)
        out = self.output_dir / case
        keys = [k for k in OUTPUTS if k in d and (k not in UNCERTAINTY_MAPS or self.num_samples > 1)]
        targets = [out / FILE_NAMES[k] for k in keys] + [out / "preview.png"]
        if "std_hu" in keys:
            targets.append(out / "uncertainty.json")
        refuse_overwrite(targets, self.overwrite)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{case}.partial-", dir=self.output_dir))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on the renamed case folder
        try:
            self._write(d, ref, case, keys, tmp)
            move_into(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        d["output_folder"] = str(out)
        return d

    def _write(self, d: dict, ref: nib.Nifti1Image, case: str, keys: list[str], out: Path) -> None:
        """Write every product of one case into the folder ``out``."""
        arrays = {k: convert_to_numpy(d[k])[0] for k in keys}
        for k in keys:
            save_like(arrays[k], ref, out / FILE_NAMES[k], OUTPUTS[k])
        if self.num_samples > 1 and "std_hu" in arrays:
            image = d.get("uncertainty_score")
            scores = {"image_std_hu": float(image) if image is not None else float(arrays["std_hu"].mean()),
                      "mask_entropy": float(d.get("mask_uncertainty_score") or 0.0)}
            record = {"case_id": case, **scores, "uncertainty_measure": self.measure,
                      "uncertainty_score": scores[self.measure], "definition": MEASURES[self.measure],
                      "num_samples": self.num_samples, "uncertainty_threshold": self.threshold}
            if self.threshold is not None:
                record["low_confidence"] = scores[self.measure] > self.threshold
                if record["low_confidence"]:
                    logger.warning("case %s: low confidence (%s %.4g > threshold %.4g): check its outputs", case,
                                   self.measure, scores[self.measure], self.threshold)
            (out / "uncertainty.json").write_text(json.dumps(record, indent=1))
        if self.preview:
            ncct = np.asarray(ref.dataobj, dtype=np.float32) if ref.ndim == 3 else arrays["synthetic_cect"]
            preview_png(ncct, arrays["synthetic_cect"], arrays.get("lumen", np.zeros(ncct.shape)),
                        arrays.get("thrombus", np.zeros(ncct.shape)), out / "preview.png", self.window,
                        std_hu=arrays.get("std_hu") if self.num_samples > 1 else None)
