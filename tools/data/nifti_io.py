"""NIfTI reading and writing for the data-preparation CLIs: clear errors, grid checks, uint8 label maps.

Geometry is sacred: a written label map carries the affine and header geometry (qform/sform, zooms,
units) of the file it was made from; only its data type becomes uint8 (no intensity scaling).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import NibabelWriter

from tools.engines.errors import InputFileError, InputValueError

__all__ = [
    "AtomicNibabelWriter",
    "NIFTI_SUFFIXES",
    "case_name",
    "check_same_grid",
    "load_array",
    "load_labels",
    "load_nifti",
    "id_counts",
    "present_ids",
    "save_atomic",
    "save_label_like",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_name(path: str | Path) -> str:
    """File name without its NIfTI suffix (``amos_0013.nii.gz`` -> ``amos_0013``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; the data are read lazily).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable NIfTI file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"NIfTI file '{path}' does not exist")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt/unknown files
        raise InputValueError(f"cannot read NIfTI file '{path}': {e}") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputValueError(f"'{path}' is a {type(img).__name__}, expected a NIfTI image")
    return img


def load_array(path: str | Path, img: nib.Nifti1Image | None = None) -> np.ndarray:
    """Read the voxel data of ``path`` in its stored type (scaled by the header's slope/intercept if set)."""
    img = img if img is not None else load_nifti(path)
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # a truncated .nii.gz raises EOFError / zlib.error / OSError
        raise InputValueError(f"cannot read the voxel data of NIfTI file '{path}' (truncated or corrupt file?): "
                              f"{type(e).__name__}: {e}") from e


def load_labels(path: str | Path, img: nib.Nifti1Image | None = None) -> np.ndarray:
    """Read a label map as an integer array (int64 only if needed); non-integer values raise ``ValueError``."""
    data = load_array(path, img)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InputValueError(f"label map '{path}' holds non-integer values; expected integer class ids")
        data = rounded.astype(np.int64)
    return data


def present_ids(labels: np.ndarray) -> list[int]:
    """Sorted class ids present in an integer label map (bincount: fast on large uint8 maps)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return []
    if flat.min() < 0:
        return [int(v) for v in np.unique(flat)]
    return np.flatnonzero(np.bincount(flat)).tolist()


def id_counts(labels: np.ndarray) -> dict[int, int]:
    """Voxel count of every class id present in an integer label map."""
    flat = np.asarray(labels).ravel()
    if flat.size and flat.min() >= 0:
        counts = np.bincount(flat)
        return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}


def check_same_grid(path_a: str | Path, img_a, path_b: str | Path, img_b, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` naming both files unless they share the same spatial shape and affine
    (affine entries equal within ``atol`` mm)."""
    shape_a, shape_b = tuple(img_a.shape[:3]), tuple(img_b.shape[:3])
    if shape_a != shape_b:
        raise InputValueError(
            f"'{path_a}' (shape {shape_a}) and '{path_b}' (shape {shape_b}) are not on the same voxel grid; "
            "resample one onto the other"
        )
    if not np.allclose(img_a.affine, img_b.affine, atol=atol):
        worst = float(np.abs(np.asarray(img_a.affine) - np.asarray(img_b.affine)).max())
        raise InputValueError(
            f"'{path_a}' and '{path_b}' have different affines (not on the same grid; largest difference "
            f"{worst:.4g} mm, tolerance {atol} mm): {_flat(img_a.affine)} vs {_flat(img_b.affine)}; "
            "resample one onto the other"
        )


def _flat(affine) -> str:
    """The top three rows of an affine on one line."""
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


def save_label_like(labels: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    """Save ``labels`` (class ids 0..255, same spatial shape as ``reference``) as uint8 NIfTI with the
    reference's affine and header geometry (qform/sform codes, zooms, units)."""
    labels = np.asarray(labels)
    if labels.shape[:3] != tuple(reference.shape[:3]):
        raise ValueError(
            f"label array shape {labels.shape} does not match the reference grid {reference.shape[:3]} for '{path}'"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit uint8 for '{path}'")
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0
    out = nib.Nifti1Image(labels.astype(np.uint8), reference.affine, header=header)
    qform, qcode = reference.get_qform(coded=True)
    sform, scode = reference.get_sform(coded=True)
    if qcode:
        out.set_qform(qform, int(qcode))
    if scode:
        out.set_sform(sform, int(scode))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(path))
    return path


def _partial(path: Path) -> Path:
    """Temporary name of ``path`` in its folder while it is written (keeps the .nii / .nii.gz suffix)."""
    return path.with_name(f".partial-{os.getpid()}-{path.name}")


def save_atomic(img: nib.Nifti1Image, path: str | Path) -> Path:
    """``nib.save`` to a temporary name in the target folder, then rename: never a half-written file."""
    path = Path(path)
    tmp = _partial(path)
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes to a temporary name in the target folder, then renames: a failed
    or killed run never leaves a half-written NIfTI under the final name (``SaveImaged(writer=...)``)."""

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:
        path = Path(filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _partial(path)
        try:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
