"""Inference inputs of AortaDiff: an NCCT volume plus its aorta mask, checked before anything runs.

Errors name the file: a missing NCCT or aorta mask (``FileNotFoundError``), an aorta mask on another grid
than the NCCT (``ValueError`` with both shapes/affines) and an empty aorta mask (``ValueError``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tools.data.datalist import load_datalist


def check_aorta_inputs(ncct_file: str | Path, aorta_file: str | Path | None, atol_mm: float = 1e-3) -> None:
    """Raise a clear error unless ``aorta_file`` exists, lies on ``ncct_file``'s grid and is not empty."""
    ncct_file = Path(ncct_file)
    if not ncct_file.is_file():
        raise FileNotFoundError(f"NCCT volume '{ncct_file}' does not exist (key 'ncct' / --input_ncct)")
    if aorta_file is None or str(aorta_file) == "":
        raise FileNotFoundError(f"no aorta mask given for NCCT '{ncct_file}': AortaDiff needs the aorta mask "
                                "(key 'aorta' in the datalist, or --input_aorta FILE)")
    aorta_file = Path(aorta_file)
    if not aorta_file.is_file():
        raise FileNotFoundError(f"aorta mask '{aorta_file}' (for NCCT '{ncct_file}') does not exist")
    img, msk = nib.load(str(ncct_file)), nib.load(str(aorta_file))
    if img.shape[:3] != msk.shape[:3] or not np.allclose(img.affine, msk.affine, atol=atol_mm):
        raise ValueError(
            f"aorta mask '{aorta_file}' is not on the grid of NCCT '{ncct_file}': shape {msk.shape} vs {img.shape}, "
            f"affine\n{np.round(msk.affine, 4)}\nvs\n{np.round(img.affine, 4)}; resample the mask onto the NCCT grid")
    if not np.any(np.asarray(msk.dataobj)):
        raise ValueError(f"aorta mask '{aorta_file}' is empty (no voxel > 0): nothing to generate for NCCT '{ncct_file}'")


def inference_entries(datalist: str | Path | None = None, split: str = "test", input_ncct: str | None = None,
                      input_aorta: str | None = None, check: bool = True) -> list[dict]:
    """Entries ``{"image": ncct, "aorta": mask, "case_id", "ncct_path"}`` for the inference pipeline.

    ``input_ncct`` (+ ``input_aorta``) selects one case; otherwise ``split`` of ``datalist`` (keys ``ncct``,
    ``aorta``) is used. Every entry is checked with :func:`check_aorta_inputs` when ``check``.
    """
    if input_ncct:
        case_id = Path(input_ncct).name.split(".")[0]
        raw = [{"ncct": str(input_ncct), "aorta": input_aorta, "case_id": case_id}]
    elif datalist:
        raw = load_datalist(datalist, split, required_keys=("ncct",))
    else:
        raise ValueError("inference needs --input_ncct FILE (and --input_aorta FILE) or a datalist with split "
                         f"'{split}'")
    out = []
    for i, e in enumerate(raw):
        if check:
            check_aorta_inputs(e["ncct"], e.get("aorta"))
        # MONAI's datalist loader turns a case_id that names an existing folder into an absolute path
        cid = Path(str(e.get("case_id", f"case_{i:03d}"))).name
        out.append({"image": str(e["ncct"]), "aorta": str(e["aorta"]), "case_id": cid, "ncct_path": str(e["ncct"])})
    return out
