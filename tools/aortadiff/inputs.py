"""Inference inputs of AortaDiff: an NCCT volume plus its aorta mask (a binary mask, or a label map with the
aorta's id ``aorta_label``, e.g. TotalSegmentator's 52), or the NCCT alone (the aorta segmenter of
:mod:`tools.aortadiff.aorta_seg` finds the aorta), checked before anything runs.

Errors name the file: a missing NCCT or aorta mask (``FileNotFoundError``); an unreadable (e.g. truncated) or
non-3D file, NaN/inf or non-HU NCCT values, an aorta mask on another grid than the NCCT (both shapes/affines),
an empty aorta mask, a label map without the requested ``aorta_label`` and a multi-label map given as a binary
mask (``ValueError``); all are :class:`tools.engines.errors.BundleInputError`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tools.data.checks import check_finite, check_hu, read_volume
from tools.data.datalist import load_datalist
from tools.engines.errors import InputFileError, InputValueError


def check_ncct(ncct_file: str | Path) -> nib.Nifti1Image:
    """The NCCT exists, is a readable 3D volume, finite and in HU; returns its header."""
    ncct_file = Path(ncct_file)
    if not ncct_file.is_file():
        raise InputFileError(f"NCCT volume '{ncct_file}' does not exist (key 'ncct' / --input_ncct)")
    img, ncct = read_volume(ncct_file, "ncct")
    check_finite(ncct_file, "ncct", ncct)
    check_hu(ncct_file, "ncct", ncct)
    return img


def check_aorta_inputs(ncct_file: str | Path, aorta_file: str | Path | None, atol_mm: float = 1e-3,
                       aorta_label: int = 0) -> None:
    """Raise a clear error unless ``aorta_file`` exists, lies on ``ncct_file``'s grid and holds aorta.

    ``aorta_label`` 0: ``aorta_file`` is a binary mask (every voxel > 0 is aorta); a file with several non-zero
    values is refused (a multi-label map read as one mask would make the whole abdomen "aorta"). ``aorta_label``
    N > 0: ``aorta_file`` is a label map and the aorta is its class N (TotalSegmentator ``total``: 52); a map
    without any voxel N is refused, naming the ids it holds.
    """
    ncct_file = Path(ncct_file)
    if aorta_file is None or str(aorta_file) == "":
        if not ncct_file.is_file():
            raise InputFileError(f"NCCT volume '{ncct_file}' does not exist (key 'ncct' / --input_ncct)")
        raise InputFileError(f"no aorta mask given for NCCT '{ncct_file}': AortaDiff needs the aorta mask "
                                "(key 'aorta' in the datalist, or --input_aorta FILE)")
    aorta_file = Path(aorta_file)
    if not ncct_file.is_file():
        raise InputFileError(f"NCCT volume '{ncct_file}' does not exist (key 'ncct' / --input_ncct)")
    if not aorta_file.is_file():
        raise InputFileError(f"aorta mask '{aorta_file}' (for NCCT '{ncct_file}') does not exist")
    img = check_ncct(ncct_file)
    msk, aorta = read_volume(aorta_file, "aorta")
    if img.shape[:3] != msk.shape[:3] or not np.allclose(img.affine, msk.affine, atol=atol_mm):
        raise InputValueError(
            f"aorta mask '{aorta_file}' is not on the grid of NCCT '{ncct_file}': shape {msk.shape} vs {img.shape}, "
            f"affine {np.round(msk.affine[:3], 4).tolist()} vs {np.round(img.affine[:3], 4).tolist()}; "
            "resample the mask onto the NCCT grid")
    check_aorta_label(aorta_file, aorta, aorta_label, ncct_file)


def check_aorta_label(aorta_file: str | Path, aorta: np.ndarray, aorta_label: int, ncct_file: str | Path) -> None:
    """The mask / label map ``aorta`` (read from ``aorta_file``) holds aorta under ``aorta_label`` (see
    :func:`check_aorta_inputs`)."""
    aorta_label = int(aorta_label)
    if aorta_label < 0:
        raise InputValueError(f"config key 'aorta_label' must be 0 (binary aorta mask) or a label id > 0, got {aorta_label}")
    ids = np.unique(aorta)
    nonzero = [v.item() for v in ids if v != 0]
    shown = [int(v) if float(v).is_integer() else float(v) for v in nonzero[:12]] + (["..."] if len(nonzero) > 12 else [])
    if aorta_label:
        if aorta_label not in ids:
            raise InputValueError(
                f"label map '{aorta_file}' has no voxel with --aorta_label {aorta_label} (ids present: {shown}): "
                "not the aorta's id in this map? (TotalSegmentator 'total': 52)")
        return
    if not nonzero:
        raise InputValueError(f"aorta mask '{aorta_file}' is empty (no voxel > 0): nothing to generate for NCCT '{ncct_file}'")
    if len(nonzero) > 1:
        raise InputValueError(
            f"aorta mask '{aorta_file}' holds {len(nonzero)} different labels {shown}, not one mask: for a label map "
            "give the aorta's id with --aorta_label ID (TotalSegmentator 'total': 52)")


def inference_entries(datalist: str | Path | None = None, split: str = "test", input_ncct: str | None = None,
                      input_aorta: str | None = None, check: bool = True, aorta_label: int = 0,
                      segment_missing: bool = False) -> list[dict]:
    """Entries ``{"image": ncct, "aorta": mask, "case_id", "ncct_path"}`` for the inference pipeline.

    ``input_ncct`` (+ ``input_aorta``) selects one case; otherwise ``split`` of ``datalist`` (keys ``ncct``,
    ``aorta``) is used. Every entry is checked with :func:`check_aorta_inputs` (``aorta_label`` as there) when
    ``check``. With ``segment_missing`` an entry may have no aorta mask: it then has no ``aorta`` key (the
    aorta segmenter finds it, :mod:`tools.aortadiff.aorta_seg`) and only its NCCT is checked.
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
        has_aorta = e.get("aorta") not in (None, "")
        if check:
            if has_aorta or not segment_missing:
                check_aorta_inputs(e["ncct"], e.get("aorta"), aorta_label=aorta_label)
            else:
                check_ncct(e["ncct"])
        # MONAI's datalist loader turns a case_id that names an existing folder into an absolute path
        cid = Path(str(e.get("case_id", f"case_{i:03d}"))).name
        entry = {"image": str(e["ncct"]), "case_id": cid, "ncct_path": str(e["ncct"])}
        if has_aorta:
            entry["aorta"] = str(e["aorta"])
        out.append(entry)
    return out
