"""Geometry primitives of the CT phantom generator (`tools.data.phantoms`).

A phantom is painted into a *tissue map* (uint8 array, shape ``(nx, ny, nz)``, axial slices along
the 3rd axis) whose voxels know their world position in **RAS millimetres** as in NIfTI/nibabel:
+x = towards the patient's Right, +y = Anterior, +z = Superior (DICOM LPS world = (-x, -y, z)). Every shape is defined in those world coordinates and sampled
through the case affine, so a LPS-stored array (affine ``diag(-dx, -dy, dz)``) still shows the liver
on the patient's right in world space.

Axis-aligned affines make world x depend only on voxel index i (y on j, z on k), so shapes are
evaluated by broadcasting three 1-D coordinate vectors over the shape's bounding box only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ORIENTATIONS", "Canvas", "Deform", "Grid", "make_grid", "rotation"]

ORIENTATIONS = ("RAS", "LPS")


@dataclass(frozen=True)
class Grid:
    """Voxel grid of one case.

    Attributes:
        x, y, z: world RAS coordinates (mm, float32) of voxel indices i, j, k; shapes (nx,), (ny,), (nz,).
        affine: 4x4 voxel-to-RAS-world affine written into the NIfTI header.
        spacing: (dx, dy, dz) in mm.
        orientation: "RAS" or "LPS" (orientation of the stored voxel axes).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)


def make_grid(
    size: int, slices: int, spacing_xy: float, spacing_z: float, orientation: str, centre: tuple[float, float, float]
) -> Grid:
    """Grid of ``size x size x slices`` voxels whose centre voxel sits at world ``centre`` (RAS mm).

    ``orientation`` "RAS": voxel index i runs towards the patient's right, j anterior, k superior
    (affine diag(+dx, +dy, +dz)); "LPS" (DICOM order): i runs left, j posterior (affine diag(-dx, -dy, +dz)).
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    sign = 1.0 if orientation == "RAS" else -1.0
    steps = np.array([sign * spacing_xy, sign * spacing_xy, spacing_z])
    n = np.array([size, size, slices])
    origin = np.asarray(centre, dtype=float) - steps * (n - 1) / 2.0
    origin = np.round(origin, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(steps)
    affine[:3, 3] = origin
    coords = [(origin[a] + steps[a] * np.arange(n[a])).astype(np.float32) for a in range(3)]
    return Grid(coords[0], coords[1], coords[2], affine, (float(spacing_xy), float(spacing_xy), float(spacing_z)), orientation)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (radians): ``yaw`` about z (axial plane), then ``pitch`` about x, ``roll`` about y."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Deform:
    """Smooth random boundary deformation: the unit surface of a shape becomes ``1 + eps(q)`` with
    ``eps(q) = sum_k amp_k * sin(w_k . q + phase_k)`` over normalised shape coordinates ``q``."""

    waves: np.ndarray  # (K, 3) wave vectors in normalised units
    amps: np.ndarray  # (K,)
    phases: np.ndarray  # (K,)

    @staticmethod
    def random(rng: np.random.Generator, amount: float = 0.08, k: int = 3, freq: float = 2.5) -> Deform:
        if amount <= 0:
            return Deform(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        w = rng.normal(size=(k, 3))
        w *= (freq * rng.uniform(0.6, 1.4, size=(k, 1))) / np.linalg.norm(w, axis=1, keepdims=True)
        amps = amount * rng.uniform(0.4, 1.0, size=k) / np.sqrt(k)
        return Deform(w, amps, rng.uniform(0, 2 * np.pi, size=k))

    @property
    def bound(self) -> float:
        return float(np.abs(self.amps).sum())

    def __call__(self, q0, q1, q2):
        eps = 0.0
        for w, a, p in zip(self.waves, self.amps, self.phases):
            eps = eps + np.float32(a) * np.sin(np.float32(w[0]) * q0 + np.float32(w[1]) * q1 + np.float32(w[2]) * q2 + np.float32(p))
        return eps


def _table(ids) -> np.ndarray:
    """Boolean lookup table over uint8 tissue ids (True for ``ids``)."""
    tab = np.zeros(256, bool)
    tab[np.asarray(ids, dtype=np.intp)] = True
    return tab


NO_DEFORM = Deform(np.zeros((0, 3)), np.zeros(0), np.zeros(0))


class Canvas:
    """Tissue map being painted: later strokes win. ``t`` is uint8 (nx, ny, nz)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.t = np.zeros(grid.shape, dtype=np.uint8)

    # -- bounding boxes -------------------------------------------------------------------------------
    def box(self, lo, hi):
        """Index slices and broadcastable world coordinates of the voxels with lo <= (x, y, z) <= hi."""
        sl, co = [], []
        for a, v in enumerate((self.grid.x, self.grid.y, self.grid.z)):
            idx = np.nonzero((v >= lo[a]) & (v <= hi[a]))[0]
            if idx.size == 0:
                return None
            s = slice(int(idx[0]), int(idx[-1]) + 1)
            sl.append(s)
            shape = [1, 1, 1]
            shape[a] = s.stop - s.start
            co.append(v[s].reshape(shape))
        return tuple(sl), co

    def paint_mask(self, value: int, mask_fn: Callable, lo, hi, only=None, exclude=None) -> None:
        """Set ``value`` where ``mask_fn(X, Y, Z)`` is true inside the world box [lo, hi];
        ``only``/``exclude``: tissue ids the stroke may / may not overwrite."""
        b = self.box(lo, hi)
        if b is None:
            return
        sl, (X, Y, Z) = b
        view = self.t[sl]
        m = np.broadcast_to(mask_fn(X, Y, Z), view.shape)
        if only is not None:
            m = m & _table(only)[view]
        if exclude is not None:
            m = m & ~_table(exclude)[view]
        view[m] = value

    # -- shapes ---------------------------------------------------------------------------------------
    def ellipsoid(self, value, centre, semi, rot=None, deform: Deform = NO_DEFORM, only=None, exclude=None,
                  zlim=None) -> None:
        """Deformed ellipsoid, semi-axes ``semi`` (mm) along the columns of ``rot`` (3x3), world centre (mm).
        ``zlim`` (zmin, zmax) optionally clips it in world z."""
        c = np.asarray(centre, dtype=np.float32)
        s = np.asarray(semi, dtype=np.float32)
        r = np.eye(3, dtype=np.float32) if rot is None else np.asarray(rot, dtype=np.float32)
        m = (r / s[None, :]).T  # q = M (p - c)
        ext = float(s.max()) * (1.0 + deform.bound) + 1.0
        lo, hi = c - ext, c + ext
        if zlim is not None:
            lo[2], hi[2] = max(lo[2], zlim[0]), min(hi[2], zlim[1])

        def fn(X, Y, Z):
            dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
            q = [m[i, 0] * dx + m[i, 1] * dy + m[i, 2] * dz for i in range(3)]
            d2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2]
            if not deform.amps.size:
                return d2 < 1.0
            # the deformation only matters in the shell (1 - bound)^2 <= d2 < (1 + bound)^2
            bd = deform.bound
            inside = d2 < (1.0 - bd) ** 2
            shell = (d2 < (1.0 + bd) ** 2) & ~inside
            idx = np.nonzero(shell)
            if idx[0].size:
                qs = [np.broadcast_to(qq, d2.shape)[idx] for qq in q]
                inside[idx] = d2[idx] < (1.0 + deform(*qs)) ** 2
            return inside

        self.paint_mask(value, fn, lo, hi, only, exclude)

    def tube(self, value, z, cx, cy, a, b, angle=0.0, only=None, exclude=None, harmonics=None) -> None:
        """Generalised elliptic cylinder along world z: per-slice centre ``(cx, cy)`` and semi-axes
        ``(a, b)`` (arrays over the grid's slices, mm; ``a <= 0`` = absent), rotated by ``angle``.
        ``harmonics``: optional list of (n, amp, phase) radial perturbations ``1 + amp cos(n phi + phase)``."""
        a = np.asarray(a, dtype=np.float32)
        present = a > 0
        if not present.any():
            return
        cx = np.broadcast_to(np.asarray(cx, np.float32), a.shape)
        cy = np.broadcast_to(np.asarray(cy, np.float32), a.shape)
        b = np.broadcast_to(np.asarray(b, np.float32), a.shape)
        ext = float(max(a[present].max(), b[present].max())) * (1.3 if harmonics else 1.0) + 1.0
        lo = [float(cx[present].min()) - ext, float(cy[present].min()) - ext, float(z[present].min()) - 1e-3]
        hi = [float(cx[present].max()) + ext, float(cy[present].max()) + ext, float(z[present].max()) + 1e-3]
        ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        zv = self.grid.z

        def fn(X, Y, Z):
            k = np.nonzero((zv >= Z.ravel()[0]) & (zv <= Z.ravel()[-1]))[0]
            sh = (1, 1, -1)
            ccx, ccy = cx[k].reshape(sh), cy[k].reshape(sh)
            aa, bb = np.maximum(a[k], 1e-3).reshape(sh), np.maximum(b[k], 1e-3).reshape(sh)
            dx, dy = X - ccx, Y - ccy
            u = (ca * dx + sa * dy) / aa
            v = (-sa * dx + ca * dy) / bb
            d2 = u * u + v * v
            if harmonics:
                phi = np.arctan2(v, u)
                rr = 1.0
                for n, amp, ph in harmonics:
                    rr = rr + np.float32(amp) * np.cos(np.float32(n) * phi + np.float32(ph))
                inside = d2 < rr * rr
            else:
                inside = d2 < 1.0
            return inside & (a[k] > 0).reshape(sh)

        self.paint_mask(value, fn, lo, hi, only, exclude)
