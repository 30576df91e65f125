"""Generic input checks that every bundle's ``check_inputs`` step runs in ``initialize``, before any work.

Each check raises a :class:`tools.engines.errors.BundleInputError` subclass with a one-line message that
names the file (and its datalist key) or the config key, and what to do:

* config values: :func:`check_positive`, :func:`check_choice`;
* datalists: :func:`check_nonempty` (a split left empty), :func:`check_patient_overlap` (one patient in two
  splits, by ``patient_id``, else ``case_id``, else the same image file), both through :func:`check_splits`;
* volumes: :func:`read_volume` (readable, e.g. not a truncated gzip; 3D), :func:`check_finite` (no NaN/inf),
  :func:`check_hu` (a CT stored without its rescale slope/intercept), :func:`check_label_ids` (ids in the
  bundle's classes, before any mapping), :func:`check_same_grid` of an entry's files (through the affines);
* :func:`check_entries` runs the volume checks over datalist entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tools.data.datalist import load_datalist
from tools.data.nifti_io import check_same_grid, load_array, load_nifti
from tools.engines.errors import InputValueError

__all__ = [
    "check_choice",
    "check_entries",
    "check_finite",
    "check_hu",
    "check_label_ids",
    "check_nonempty",
    "check_patient_overlap",
    "check_positive",
    "check_splits",
    "read_volume",
]

#: a CT whose minimum is >= this and maximum above ``RAW_CT_MAX`` holds raw scanner values, not HU
RAW_CT_MIN, RAW_CT_MAX = 0.0, 3000.0


def check_positive(**values: Any) -> None:
    """Every config key given (``image_size=32, iterations=10``) is a positive integer, or a list of them."""
    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in items):
            raise InputValueError(f"config key '{key}' must be a positive integer{' (each entry)' if len(items) > 1 else ''}, "
                                  f"got {value!r}")


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """``value`` of config key ``key`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise InputValueError(f"config key '{key}' must be one of {allowed}, got {value!r}")


def check_nonempty(entries: Sequence[Any], split: str, datalist: str | Path, hint: str = "") -> None:
    """Split ``split`` of ``datalist`` kept at least one entry (after any filtering)."""
    if len(entries) == 0:
        raise InputValueError(f"datalist '{datalist}', split '{split}' has no usable entries"
                              + (f" ({hint})" if hint else "") + "; add cases to it")


def _patient(entry: Mapping[str, Any], base: Path) -> str | None:
    for key in ("patient_id", "case_id"):
        if entry.get(key) not in (None, ""):
            return f"{key} {Path(str(entry[key])).name!r}"
    for key, value in entry.items():
        if isinstance(value, str) and value.endswith((".nii", ".nii.gz")):
            file = Path(value).expanduser()
            return f"file '{file if file.is_absolute() else (base / file).resolve()}'"
    return None


def check_patient_overlap(datalist: str | Path, splits: Sequence[str] = ("training", "validation", "test")) -> None:
    """No patient appears in two splits of ``datalist`` (compared by ``patient_id``, else ``case_id``, else
    the first NIfTI file of the entry)."""
    path = Path(datalist)
    content = json.loads(path.read_text())
    seen: dict[str, str] = {}
    for split in splits:
        for entry in content.get(split, []) if isinstance(content, dict) else []:
            pid = _patient(entry, path.parent) if isinstance(entry, dict) else None
            if pid is None:
                continue
            first = seen.setdefault(pid, split)
            if first != split:
                raise InputValueError(f"datalist '{path}': {pid} is in split '{first}' and in split '{split}'; "
                                      "split by patient so that no patient is in two splits")


def check_splits(datalist: str | Path, splits: Sequence[str], required_keys: Sequence[str]) -> list[dict]:
    """The entries of ``splits`` of ``datalist`` (paths resolved and existing), after checking that no patient is
    in two splits and that every split in ``splits`` has entries with ``required_keys``."""
    check_patient_overlap(datalist)
    entries: list[dict] = []
    for split in splits:
        files = load_datalist(datalist, split, required_keys=required_keys)
        check_nonempty(files, split, datalist)
        entries += files
    return entries


def read_volume(path: str | Path, key: str, ndim: int = 3) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Header and voxel data of ``path`` (datalist key ``key``); a 4D file with one volume counts as 3D.

    Raises:
        InputFileError: missing. InputValueError: unreadable (e.g. truncated gzip) or not ``ndim``-D.
    """
    img = load_nifti(path)
    data = load_array(path, img)
    if data.ndim == ndim + 1 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        raise InputValueError(f"'{path}' (key '{key}') is {data.ndim}D with shape {tuple(data.shape)}; "
                              f"expected a {ndim}D volume")
    return img, data


def check_finite(path: str | Path, key: str, data: np.ndarray) -> None:
    """No NaN or infinite voxel."""
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputValueError(f"'{path}' (key '{key}') has {bad} NaN or infinite voxel(s); fix or mask them "
                                  "before running")


def check_hu(path: str | Path, key: str, data: np.ndarray) -> None:
    """A CT in HU: refuse raw scanner values (minimum >= 0 and maximum > 3000: rescale not applied)."""
    lo, hi = float(np.min(data)), float(np.max(data))
    if lo >= RAW_CT_MIN and hi > RAW_CT_MAX:
        raise InputValueError(
            f"'{path}' (key '{key}') has values {lo:g}..{hi:g}, not Hounsfield units (air is about -1000 HU): the "
            "scanner's rescale slope and intercept were not applied; convert with them (NIfTI scl_slope/scl_inter, "
            "DICOM RescaleSlope/RescaleIntercept, usually HU = value - 1024)")


def check_label_ids(path: str | Path, key: str, data: np.ndarray, allowed: Iterable[int], hint: str = "") -> None:
    """Every voxel value of a label map is an integer id in ``allowed`` (checked before any mapping)."""
    allowed_ids = sorted(int(a) for a in allowed)
    values = np.unique(data)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputValueError(f"'{path}' (key '{key}') holds non-integer label values; expected class ids "
                              f"{allowed_ids[0]}..{allowed_ids[-1]}")
    unknown = sorted(set(int(v) for v in values) - set(allowed_ids))
    if unknown:
        raise InputValueError(f"'{path}' (key '{key}') holds label id(s) {unknown[:10]} outside the bundle's classes "
                              f"{allowed_ids[0]}..{allowed_ids[-1]}" + (f" ({hint})" if hint else ""))


def check_entries(entries: Sequence[Mapping[str, Any]], image_keys: Sequence[str] = (),
                  label_keys: Sequence[str] = (), label_ids: Iterable[int] | None = None,
                  mask_keys: Sequence[str] = (), ndim: int = 3, label_hint: str = "") -> None:
    """Read every file of ``entries`` once and check it: readable and ``ndim``-D; CT images (``image_keys``)
    finite and in HU; label maps (``label_keys``) with ids in ``label_ids``; masks (``mask_keys``) finite;
    all files of an entry on the grid of its first image (shape and affine)."""
    allowed = None if label_ids is None else sorted(int(i) for i in label_ids)
    for entry in entries:
        ref: tuple[str, nib.Nifti1Image] | None = None
        for key in [*image_keys, *label_keys, *mask_keys]:
            path = entry.get(key)
            if path in (None, ""):
                continue
            img, data = read_volume(path, key, ndim)
            check_finite(path, key, data)
            if key in image_keys:
                check_hu(path, key, data)
            if key in label_keys and allowed is not None:
                check_label_ids(path, key, data, allowed, label_hint)
            if ref is None:
                ref = (str(path), img)
            else:
                check_same_grid(ref[0], ref[1], path, img)
