"""Clinical AAA measurements on axial slices: lumen diameters (mm) and thrombus area (mm^2, % error).

Definitions (all per axial 2D slice, arrays indexed ``(H, W)`` with in-plane voxel spacing
``(spacing[0], spacing[1])`` in mm along those two array axes):

- **Maximum in-plane (Feret) diameter** of the lumen, mm: the largest distance between two points of
  the lumen region's boundary, i.e. the maximal caliper width over all in-plane directions. The
  boundary is the iso-0.5 contour of the mask (``skimage.measure.find_contours``, half-way between
  inside and outside pixel centres), scaled by the spacing; the maximum is taken over its convex
  hull. (skimage's ``feret_diameter_max`` uses pixel corners and overestimates by up to a pixel
  diagonal under anisotropic spacing.)
- **Minor-axis (short-axis) diameter**, mm: the minor-axis length of the ellipse with the same
  second-order central moments as the lumen region (``axis_minor_length`` with ``spacing``); equals
  the diameter for a disk and 2 b for an ellipse with semi-axes a >= b.
- When a slice holds several lumen components (e.g. at the iliac bifurcation) the largest one is
  measured. An empty slice has diameter 0 mm.
- **Diameter MAE**, mm: mean over slices where the reference lumen is present of
  ``|d_pred - d_ref|`` (``d_pred`` = 0 when the prediction is empty there).
- **Thrombus area**, mm^2: number of thrombus pixels x ``spacing[0] * spacing[1]``.
- **Thrombus area error**, %: ``|A_pred - A_ref| / A_ref * 100`` per slice with reference thrombus,
  averaged over those slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist
from skimage.measure import find_contours, label, regionprops


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab = label(mask.astype(bool), connectivity=2)
    if lab.max() <= 1:
        return lab
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (lab == sizes.argmax()).astype(np.int32)


def lumen_diameters_mm(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> tuple[float, float]:
    """(max Feret diameter, minor-axis diameter) in mm of the lumen in a 2D mask (H, W); (0, 0) if empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"lumen_diameters_mm expects a 2D slice (H, W), got shape {m.shape}")
    if not m.any():
        return 0.0, 0.0
    sp = tuple(float(s) for s in spacing[:2])
    lab = _largest_component(m)
    props = regionprops(lab, spacing=sp)[0]
    return _feret_max_mm(lab > 0, sp), float(props.axis_minor_length)


def _feret_max_mm(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    contour = np.concatenate(find_contours(np.pad(mask.astype(np.float32), 1), 0.5)) * np.asarray(spacing)
    try:
        contour = contour[ConvexHull(contour).vertices]
    except (QhullError, ValueError):  # degenerate (collinear) contour: use all points
        pass
    return float(pdist(contour).max()) if len(contour) > 1 else 0.0


def area_mm2(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Area in mm^2 of a 2D mask: pixel count x spacing[0] x spacing[1]."""
    return float(np.count_nonzero(mask)) * float(spacing[0]) * float(spacing[1])


def thrombus_from_masks(aorta: np.ndarray, lumen: np.ndarray) -> np.ndarray:
    """Thrombus = aorta minus lumen (boolean)."""
    return np.asarray(aorta).astype(bool) & ~np.asarray(lumen).astype(bool)


def diameter_abs_errors(pred_masks: Sequence[np.ndarray], ref_masks: Sequence[np.ndarray],
                        spacing: Sequence[float] = (1.0, 1.0), kind: str = "max") -> np.ndarray:
    """Per-slice |d_pred - d_ref| in mm over slices whose reference lumen is non-empty.

    ``kind``: "max" (Feret) or "minor" (minor-axis diameter).
    """
    idx = {"max": 0, "minor": 1}[kind]
    errs = []
    for p, r in zip(pred_masks, ref_masks):
        if not np.any(r):
            continue
        errs.append(abs(lumen_diameters_mm(p, spacing)[idx] - lumen_diameters_mm(r, spacing)[idx]))
    return np.asarray(errs, dtype=np.float64)


def diameter_mae_mm(pred_masks: Sequence[np.ndarray], ref_masks: Sequence[np.ndarray],
                    spacing: Sequence[float] = (1.0, 1.0), kind: str = "max") -> float:
    """Mean absolute diameter error in mm (see module docstring); NaN when no slice has a reference lumen."""
    e = diameter_abs_errors(pred_masks, ref_masks, spacing, kind)
    return float(e.mean()) if e.size else float("nan")


def thrombus_area_error_percent(pred_thrombus: np.ndarray, ref_thrombus: np.ndarray,
                                spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """|A_pred - A_ref| / A_ref * 100 for one slice; NaN when the reference has no thrombus."""
    a_ref = area_mm2(ref_thrombus, spacing)
    if a_ref == 0:
        return float("nan")
    return abs(area_mm2(pred_thrombus, spacing) - a_ref) / a_ref * 100.0


def mean_thrombus_area_error_percent(pred_slices: Sequence[np.ndarray], ref_slices: Sequence[np.ndarray],
                                     spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Average of :func:`thrombus_area_error_percent` over slices with reference thrombus (NaN if none)."""
    vals = [thrombus_area_error_percent(p, r, spacing) for p, r in zip(pred_slices, ref_slices) if np.any(r)]
    return float(np.mean(vals)) if vals else float("nan")


__all__ = [
    "lumen_diameters_mm", "area_mm2", "thrombus_from_masks", "diameter_abs_errors", "diameter_mae_mm",
    "thrombus_area_error_percent", "mean_thrombus_area_error_percent",
]
