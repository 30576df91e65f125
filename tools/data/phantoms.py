"""CT phantoms: the embedded default data of every bundle and of the tests.

Three anatomies, written as NIfTI in Hounsfield units (float32 images, uint8 label maps) with a real
affine and axial slices along the 3rd array axis, plus a Decathlon-style ``datalist.json`` split by
case (= patient):

* ``aaa``: abdominal stack around an abdominal aortic aneurysm; per case ``ncct`` and ``cect`` on the
  same grid, masks ``aorta`` (outer wall) and ``lumen`` (thrombus = aorta - lumen). A share
  ``unlabeled_fraction`` of the cases has no ``lumen`` file/key (unlabeled pairs).
* ``abdomen``: ``image`` + ``label`` with the 15 AMOS22 organ ids (`ABDOMEN_LABELS`).
* ``heart``: cardiac CT angiography ``image`` + ``label`` with 8 structures (`HEART_LABELS`).

Layout: ``out/<case_id>/<key>.nii.gz``, ``out/datalist.json`` (paths relative to ``out``) and
``out/phantom_params.json`` (the parameters, used by `ensure_phantoms` to reuse a folder).

Geometry. Anatomy is built in world RAS millimetres (+x patient right, +y anterior, +z superior) and
sampled through each case's affine, so RAS-stored (affine diag(+dx, +dy, dz)) and LPS-stored
(diag(-dx, -dy, dz)) cases (half of the cases each) both have the anatomy at the same world place.
Spacing: in-plane ``dx`` uniform in 0.6-0.9 mm for ``size >= 256``; smaller grids scale it by
``256 / size`` so that the same 154-230 mm field of view is covered (32 px: 4.8-7.2 mm). Slice
spacing covers an anatomy-specific extent (aaa 110-250 mm, abdomen 260-330 mm, heart 115-145 mm):
``dz = extent / slices`` clipped to [1, 5] mm, the upper bound scaled by ``64 / slices`` for stacks of
fewer than 64 slices. The abdominal body is fitted into the field of view (patient scale
``k = body half-width / 150 mm``, i.e. a slim patient at 256 px), the AAA aorta keeps true mm.

Determinism: every case draws from ``numpy.random.default_rng([seed, anatomy, case index])`` and
the NIfTI/gzip headers carry no time stamp, so the same seed gives byte-identical files.

CLI::

    python -m tools.data.phantoms --anatomy aaa --cases 20 --out DIR --seed 0 [--size 256 --slices 64 --overwrite]
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from tools.data.phantoms_shapes import Canvas, make_grid

__all__ = [
    "ABDOMEN_LABELS",
    "ANATOMIES",
    "HEART_LABELS",
    "ensure_phantoms",
    "generate",
    "main",
    "make_case",
]

ANATOMIES = ("aaa", "abdomen", "heart")
ABDOMEN_LABELS = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gall bladder", 5: "esophagus", 6: "liver",
                  7: "stomach", 8: "aorta", 9: "postcava", 10: "pancreas", 11: "right adrenal gland",
                  12: "left adrenal gland", 13: "duodenum", 14: "bladder", 15: "prostate/uterus"}
HEART_LABELS = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "MYO", 6: "AO", 7: "PA", 8: "LAA"}
KEYS = {"aaa": ("ncct", "cect", "aorta", "lumen"), "abdomen": ("image", "label"), "heart": ("image", "label")}
PARAMS_FILE = "phantom_params.json"
GENERATOR = "tools.data.phantoms"
VERSION = 1
MIN_SIZE, MIN_SLICES = 32, 8
EXTENT_MM = {"aaa": (110.0, 250.0), "abdomen": (260.0, 330.0), "heart": (115.0, 145.0)}
_ANATOMY_CODE = {"aaa": 1, "abdomen": 2, "heart": 3}


# --------------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------------
def _geometry(anatomy: str, rng: np.random.Generator, size: int, slices: int) -> tuple[float, float, float]:
    """In-plane spacing, slice spacing (mm) and field of view (mm) of a case (see module docstring)."""
    dxy = float(rng.uniform(0.6, 0.9)) * max(1.0, 256.0 / size)
    extent = float(rng.uniform(*EXTENT_MM[anatomy]))
    dz = float(np.clip(extent / slices, 1.0, 5.0 * max(1.0, 64.0 / slices)))
    return round(dxy, 4), round(dz, 4), dxy * size


def _builder(anatomy: str):
    if anatomy == "aaa":
        from tools.data import phantoms_aaa as mod
    elif anatomy == "abdomen":
        from tools.data import phantoms_abdomen as mod
    else:
        from tools.data import phantoms_heart as mod
    return mod


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) linear-interpolation weights from m coarse samples (spanning the axis) to n fine ones."""
    pos = np.linspace(0.0, m - 1.0, n)
    i0 = np.clip(np.floor(pos).astype(int), 0, m - 2)
    w = (pos - i0).astype(np.float32)
    mat = np.zeros((n, m), np.float32)
    mat[np.arange(n), i0] = 1.0 - w
    mat[np.arange(n), i0 + 1] = w
    return mat


def _texture(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth texture field (std ~1, correlation length ~6 voxels in-plane, ~2 slices): coarse white
    noise linearly interpolated with three separable matrix products."""
    low = tuple(max(2, n // f + 2) for n, f in zip(shape, (6, 6, 2)))
    f = rng.standard_normal(low, dtype=np.float32)
    f = f @ _interp_matrix(shape[2], low[2]).T  # (a, b, nz)
    f = np.einsum("yb,abz->ayz", _interp_matrix(shape[1], low[1]), f, optimize=True)
    f = np.tensordot(_interp_matrix(shape[0], low[0]), f, axes=(1, 0))  # (nx, ny, nz)
    return np.ascontiguousarray(f * np.float32(1.6))


def _psf_noise_gain(sigma_px: float) -> float:
    """Std of a white unit noise after the in-plane gaussian PSF of ``sigma_px`` (as scipy applies it)."""
    delta = np.zeros(65, np.float64)
    delta[32] = 1.0
    w = ndimage.gaussian_filter1d(delta, sigma_px)
    return float(np.sum(w**2))  # 2-D: (sum w^2)^2 under the sqrt -> sum w^2


def render(tissue: np.ndarray, hu: np.ndarray, tex_amp: np.ndarray, texture: np.ndarray, noise_sigma: float,
           psf_px: float, rng: np.random.Generator) -> np.ndarray:
    """CT image (float32 HU, integer-valued, clipped to [-1024, 3071]) of a tissue map.

    ``hu``/``tex_amp``: per-tissue mean HU and texture amplitude; the ideal image plus white noise is
    blurred once in-plane by a gaussian PSF (``psf_px`` voxels), the noise scaled so that its final
    standard deviation is ``noise_sigma`` HU (correlated, CT-like grain).
    """
    img = np.empty(tissue.shape, np.float32, order="F")  # x fastest, as NIfTI stores voxels
    np.take(tex_amp, tissue, out=img)
    img *= texture
    img += np.take(hu, tissue)
    img += rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(noise_sigma / _psf_noise_gain(psf_px))
    for axis in (0, 1):
        ndimage.gaussian_filter1d(img, psf_px, axis=axis, output=img, truncate=3.0)
    np.round(img, out=img)
    np.clip(img, -1024, 3071, out=img)
    return img


def make_case(anatomy: str, seed: int, index: int, size: int = 256, slices: int = 64, orientation: str = "RAS",
              with_tissue: bool = False, build_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate case ``index`` of ``anatomy`` for ``seed`` in memory.

    Returns:
        dict with ``arrays`` ({key: array (size, size, slices)}; images float32 HU, masks/labels uint8),
        ``affine`` (4x4), ``spacing`` (dx, dy, dz) mm, ``orientation``, ``info`` (per-case parameters:
        noise sigma, CECT lumen HU, aorta diameters...) and, if ``with_tissue``, ``tissue`` (uint8 tissue
        map) with ``tissue_names`` (id -> name) for tests and figures. ``build_kw`` goes to the anatomy's
        ``build`` (aaa: ``kind``, see `tools.data.phantoms_aaa`).
    """
    _check_args(anatomy, 1, size, slices, seed=seed)
    rng = np.random.default_rng([int(seed), _ANATOMY_CODE[anatomy], int(index)])
    dxy, dz, fov = _geometry(anatomy, rng, size, slices)
    centre = (float(rng.uniform(-0.04, 0.04) * fov), float(rng.uniform(-0.04, 0.04) * fov), float(rng.uniform(-300, 0)))
    grid = make_grid(size, slices, dxy, dz, orientation, centre)
    canvas = Canvas(grid)
    mod = _builder(anatomy)
    built = mod.build(canvas, rng, fov, **(build_kw or {}))
    ts = built["tissues"]
    texture = _texture(grid.shape, rng)
    sigma = float(rng.uniform(8.0, 20.0))
    psf = float(rng.uniform(0.5, 0.8))
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"noise_sigma": {}, "psf_px": psf}
    for phase in built["phases"]:
        s = float(np.clip(sigma * rng.uniform(0.9, 1.1), 8.0, 20.0))
        info["noise_sigma"][phase] = s
        arrays[phase] = render(canvas.t, ts.hu[phase], ts.tex, texture, s, psf, rng)
    arrays.update(mod.masks(canvas.t, ts))
    info.update(built.get("info", {}))
    out = {"arrays": arrays, "affine": grid.affine, "spacing": grid.spacing, "orientation": orientation, "info": info}
    if with_tissue:
        out["tissue"] = canvas.t
        out["tissue_names"] = dict(enumerate(ts.names))
    return out


# --------------------------------------------------------------------------------------------------
# data set
# --------------------------------------------------------------------------------------------------
def _check_args(anatomy: Any, cases: Any, size: Any, slices: Any, unlabeled_fraction: Any = 0.0, seed: Any = 0) -> None:
    """Raise ``ValueError`` naming the first argument that is out of range."""
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {', '.join(ANATOMIES)}; got {anatomy!r}")
    for name, value, lo in (("cases", cases, 1), ("size", size, MIN_SIZE), ("slices", slices, MIN_SLICES), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")
    if isinstance(unlabeled_fraction, bool) or not isinstance(unlabeled_fraction, (int, float)) or not 0.0 <= unlabeled_fraction < 1.0:
        raise ValueError(f"unlabeled_fraction must be a number in [0, 1); got {unlabeled_fraction!r}")


def _split(case_ids: list[str], seed: int) -> dict[str, list[str]]:
    """Patient-level split: ~15 % validation and ~15 % test, every split non-empty when >= 3 cases."""
    n = len(case_ids)
    perm = np.random.default_rng([int(seed), 99]).permutation(n)
    n_val = max(1, round(0.15 * n)) if n >= 2 else 0
    n_test = max(1, round(0.15 * n)) if n >= 3 else 0
    val = sorted(case_ids[i] for i in perm[:n_val])
    test = sorted(case_ids[i] for i in perm[n_val:n_val + n_test])
    train = sorted(case_ids[i] for i in perm[n_val + n_test:])
    return {"training": train, "validation": val, "test": test}


def _unlabeled(splits: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """Cases without a lumen mask: ``round(fraction * n)``, training first, one labeled case kept per split."""
    n = sum(len(v) for v in splits.values())
    want = round(fraction * n)
    rng = np.random.default_rng([int(seed), 98])
    pool = []
    for name in ("training", "validation", "test"):
        ids = list(splits[name][1:])  # the first case of each split stays labeled
        pool += [ids[i] for i in rng.permutation(len(ids))]
    return set(pool[:want])


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _write_case(job: tuple) -> dict[str, str]:
    anatomy, seed, index, case_id, size, slices, orientation, labeled, out = job
    case = make_case(anatomy, seed, index, size, slices, orientation)
    folder = Path(out) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"case_id": case_id}
    for key in KEYS[anatomy]:
        if key == "lumen" and not labeled:
            continue
        _save(case["arrays"][key], case["affine"], folder / f"{key}.nii.gz")
        entry[key] = f"{case_id}/{key}.nii.gz"
    return entry


def _params(anatomy, cases, seed, size, slices, unlabeled_fraction) -> dict[str, Any]:
    p = {"generator": GENERATOR, "version": VERSION, "anatomy": anatomy, "cases": int(cases), "seed": int(seed),
         "size": int(size), "slices": int(slices)}
    if anatomy == "aaa":
        p["unlabeled_fraction"] = float(unlabeled_fraction)
    return p


def _read_params(out: Path) -> dict | None:
    try:
        p = json.loads((out / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return p if isinstance(p, dict) and p.get("generator") == GENERATOR else None


def _remove_own(out: Path, params: dict) -> None:
    """Remove the case folders and files that a previous run of this generator wrote into ``out``."""
    for case_id in params.get("case_ids", []):
        d = out / case_id
        if d.is_dir() and d.parent == out:
            shutil.rmtree(d)
    for name in ("datalist.json", PARAMS_FILE):
        (out / name).unlink(missing_ok=True)


def generate(anatomy: str, cases: int, out: str | Path, seed: int = 0, size: int = 256, slices: int = 64,
             unlabeled_fraction: float = 0.25, overwrite: bool = False, workers: int | None = None) -> Path:
    """Write ``cases`` phantom cases of ``anatomy`` and the datalist into ``out``; return the datalist path.

    Raises:
        ValueError: an argument is out of range (the message names it).
        FileExistsError: ``out`` exists and is not empty while ``overwrite`` is False (nothing is touched).
    """
    _check_args(anatomy, cases, size, slices, unlabeled_fraction, seed)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(_lock_path(out)):  # a second run into the same folder waits, then sees the first one's result
        return _generate(anatomy, cases, out, seed, size, slices, unlabeled_fraction, overwrite, workers)


def _lock_path(out: Path) -> Path:
    """The lock file of phantom folder ``out`` (beside it, so that emptying ``out`` keeps the lock)."""
    return out.parent / f".{out.name}.lock"


def _generate(anatomy: str, cases: int, out: Path, seed: int, size: int, slices: int, unlabeled_fraction: float,
              overwrite: bool, workers: int | None) -> Path:
    """:func:`generate` once the folder's lock is held."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"out folder {str(out)!r} is not empty; pass --overwrite (overwrite=True) to write into it")
        old = _read_params(out)
        if old is not None:
            _remove_own(out, old)
    out.mkdir(parents=True, exist_ok=True)
    params = _params(anatomy, cases, seed, size, slices, unlabeled_fraction)
    case_ids = [f"{anatomy}_{i:03d}" for i in range(cases)]
    params.update(complete=False, case_ids=case_ids)
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=1))

    splits = _split(case_ids, seed)
    unl = _unlabeled(splits, unlabeled_fraction, seed) if anatomy == "aaa" else set()
    orient = np.random.default_rng([int(seed), 97]).permutation([("RAS", "LPS")[i % 2] for i in range(cases)])
    jobs = [(anatomy, int(seed), i, cid, int(size), int(slices), str(orient[i]), cid not in unl, str(out))
            for i, cid in enumerate(case_ids)]
    workers = _workers(workers, cases)
    if workers > 1:  # spawn: safe even when the caller has torch / CUDA / threads initialised
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            entries = list(ex.map(_write_case, jobs))
    else:
        entries = [_write_case(j) for j in jobs]
    by_id = {e["case_id"]: e for e in entries}
    datalist = {name: [by_id[c] for c in ids] for name, ids in splits.items()}
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1))
    params["complete"] = True
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=1))
    return path


def _workers(workers: int | None, cases: int) -> int:
    """Worker processes: ``workers`` or the environment variable ``PHANTOM_WORKERS`` (default 1)."""
    if workers is None:
        workers = int(os.environ.get("PHANTOM_WORKERS", "1"))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1; got {workers!r}")
    return min(int(workers), cases)


def ensure_phantoms(anatomy: str, out: str | Path, cases: int = 20, seed: int = 0, size: int = 256, slices: int = 64,
                    **kw: Any) -> str:
    """Path (str) of ``out/datalist.json`` holding phantoms made with exactly these parameters.

    Reuses ``out`` when its ``phantom_params.json`` matches; regenerates (overwriting) when ``out`` was
    made by this generator with other parameters or left incomplete; generates into an empty or missing
    folder. Extra keywords (``unlabeled_fraction``, ``workers``) go to `generate`.

    Raises:
        FileExistsError: ``out`` is a non-empty folder that this generator did not make.
    """
    out = Path(out).expanduser()
    frac = kw.get("unlabeled_fraction", 0.25)
    _check_args(anatomy, cases, size, slices, frac, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(_lock_path(out)):  # two runs sharing a cache folder wait for each other
        return _ensure(anatomy, out, cases, seed, size, slices, frac, **kw)


@contextlib.contextmanager
def _lock(path: Path):
    """Exclusive advisory file lock (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure(anatomy: str, out: Path, cases: int, seed: int, size: int, slices: int, frac: float, **kw: Any) -> str:
    want = _params(anatomy, cases, seed, size, slices, frac)
    old = _read_params(out) if out.is_dir() else None
    if old is not None:
        same = old.get("complete") and all(old.get(k) == v for k, v in want.items())
        if same and (out / "datalist.json").is_file():
            return str(out / "datalist.json")
        return str(_generate(anatomy, cases, out, seed, size, slices, frac, True, kw.get("workers")))
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"phantom folder {str(out)!r} is not empty and has no {PARAMS_FILE} from {GENERATOR}; "
                              "choose another folder or empty it")
    return str(_generate(anatomy, cases, out, seed, size, slices, frac, False, kw.get("workers")))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def main(anatomy: str = "aaa", cases: int = 20, out: str | None = None, seed: int = 0, size: int = 256,
         slices: int = 64, unlabeled_fraction: float = 0.25, overwrite: bool = False, workers: int | None = None) -> str:
    """Generate phantoms: ``python -m tools.data.phantoms --anatomy aaa --cases 20 --out DIR --seed 0``.

    ``--workers`` defaults to min(2, CPU count) processes; the files do not depend on it."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not out:
        raise ValueError("out is required: pass --out DIR (the folder to write the cases and datalist.json into)")
    path = generate(anatomy, cases, out, seed=seed, size=size, slices=slices, unlabeled_fraction=unlabeled_fraction,
                    overwrite=overwrite, workers=workers)
    return str(path)


def _check_flags(argv: list[str]) -> None:
    """Reject unknown ``--flags`` before anything runs (fire would apply them to main's result afterwards)."""
    import inspect

    known = set(inspect.signature(main).parameters) | {"help", "h", "no" + "overwrite"}
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name = tok[2:].split("=", 1)[0].replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown argument --{name}; expected one of "
                                 + ", ".join(f"--{k}" for k in inspect.signature(main).parameters))


def cli(argv: list[str] | None = None) -> int:
    """Console entry: run `main` with fire; bad arguments print ``error: ...`` and return 2."""
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _check_flags(argv)
        fire.Fire(main, command=argv)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
