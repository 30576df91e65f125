"""Inference inputs of AortaDiff: an NCCT volume plus its aorta mask, checked before anything runs.

Errors name the file: a missing NCCT or aorta mask (``FileNotFoundError``); an unreadable (e.g. truncated) or
non-3D file, NaN/inf or non-HU NCCT values, an aorta mask on another grid than the NCCT (both shapes/affines)
and an empty aorta mask (``ValueError``); all are :class:`tools.engines.errors.BundleInputError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tools.data.checks import check_finite, check_hu, read_volume
from tools.data.datalist import load_datalist
from tools.engines.errors import InputFileError, InputValueError


def check_aorta_inputs(ncct_file: str | Path, aorta_file: str | Path | None, atol_mm: float = 1e-3) -> None:
    """Raise a clear error unless ``aorta_file`` exists, lies on ``ncct_file``'s grid and is not empty."""
    ncct_file = Path(ncct_file)
    if not ncct_file.is_file():
        raise InputFileError(f"NCCT volume '{ncct_file}' does not exist (key 'ncct' / --input_ncct)")
    if aorta_file is None or str(aorta_file) == "":
        raise InputFileError(f"no aorta mask given for NCCT '{ncct_file}': AortaDiff needs the aorta mask "
                                "(key 'aorta' in the datalist, or --input_aorta FILE)")
    aorta_file = Path(aorta_file)
    if not aorta_file.is_file():
        raise InputFileError(f"aorta mask '{aorta_file}' (for NCCT '{ncct_file}') does not exist")
    img, ncct = read_volume(ncct_file, "ncct")
    msk, aorta = read_volume(aorta_file, "aorta")
    check_finite(ncct_file, "ncct", ncct)
    check_hu(ncct_file, "ncct", ncct)
    if img.shape[:3] != msk.shape[:3] or not np.allclose(img.affine, msk.affine, atol=atol_mm):
        raise InputValueError(
            f"aorta mask '{aorta_file}' is not on the grid of NCCT '{ncct_file}': shape {msk.shape} vs {img.shape}, "
            f"affine {np.round(msk.affine[:3], 4).tolist()} vs {np.round(img.affine[:3], 4).tolist()}; "
            "resample the mask onto the NCCT grid")
    if not np.any(aorta):
        raise InputValueError(f"aorta mask '{aorta_file}' is empty (no voxel > 0): nothing to generate for NCCT '{ncct_file}'")


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
        raise InputValueError("inference needs --input_ncct FILE (and --input_aorta FILE) or a datalist with split "
                         f"'{split}'")
    out = []
    for i, e in enumerate(raw):
        if check:
            check_aorta_inputs(e["ncct"], e.get("aorta"))
        # MONAI's datalist loader turns a case_id that names an existing folder into an absolute path
        cid = Path(str(e.get("case_id", f"case_{i:03d}"))).name
        out.append({"image": str(e["ncct"]), "aorta": str(e["aorta"]), "case_id": cid, "ncct_path": str(e["ncct"])})
    return out
