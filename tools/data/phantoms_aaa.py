"""``aaa`` phantom: abdominal axial stack around an abdominal aortic aneurysm (NCCT + CECT pair).

The aorta keeps true millimetres: normal diameter ``d_normal`` (15-25 mm, slight taper inferiorly) with
a smooth cosine bulge to ``d_max`` (up to 70 mm) over part of the stack; inside it an eccentric lumen
sits in a crescent of thrombus whose thickness grows with the sac; calcified arcs lie on the outer
wall. See `tools.data.phantoms` for the geometry conventions.

Harder held-out cases (``kind`` of :func:`build`, :data:`KINDS`) change only the ranges some draws come
from, never the number of draws, so the ``regular`` kind is the generator's default case, byte for byte:

- ``thin_thrombus``: the thrombus crescent is 12-30 % (instead of 55-90 %) of the sac's excess radius;
- ``calcified_wall``: 12-20 calcified arcs (instead of 3-9) of 60-160 degrees (instead of 15-70);
- ``low_contrast``: the CECT lumen is 130-180 HU (instead of 250-400 HU).

:func:`write_heldout` writes such cases (case indices from 1000 on, disjoint from the training cases)
as a datalist with a ``test`` split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tools.data.phantoms_shapes import Canvas, Deform, rotation
from tools.data.phantoms_torso import (
    TORSO,
    TissueSet,
    paint_bowel,
    paint_colon,
    paint_mesentery,
    paint_torso,
    uniform,
)

TISSUES = TORSO + ["mesenteric_vessel", "kidney_cortex", "kidney_medulla", "sinus_fat", "liver", "ivc", "aortic_wall", "thrombus", "lumen",
                   "calcification"]
AORTA_TISSUES = ("aortic_wall", "thrombus", "lumen", "calcification")
# ranges of the draws that make a case hard; KINDS[kind] overrides REGULAR
REGULAR = {"thrombus_fraction": (0.55, 0.9), "calcifications": (3, 9), "calc_arc_deg": (15.0, 70.0),
           "lumen_cect_hu": (250.0, 400.0)}
KINDS = {
    "regular": {},
    "thin_thrombus": {"thrombus_fraction": (0.12, 0.3)},
    "calcified_wall": {"calcifications": (12, 21), "calc_arc_deg": (60.0, 160.0)},
    "low_contrast": {"lumen_cect_hu": (130.0, 180.0)},
}
HELDOUT_FIRST_INDEX = 1000


def kind_ranges(kind: str) -> dict:
    """The draw ranges of a case ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"aaa phantom kind must be one of {sorted(KINDS)}; got {kind!r}")
    return {**REGULAR, **KINDS[kind]}


def aorta_profile(rng: np.random.Generator, t: np.ndarray) -> dict:
    """Diameter profile along the stack height ``t`` (0 inferior .. 1 superior), all in mm."""
    d0 = uniform(rng, 17.0, 24.0)
    d_normal = d0 * (1.0 - 0.08 * (1.0 - t))  # >= 15.6 mm
    d_max = uniform(rng, 40.0, 68.0)
    tc = uniform(rng, 0.32, 0.55)
    w_lo, w_hi = uniform(rng, 0.18, 0.32), uniform(rng, 0.16, 0.3)
    w_hi = min(w_hi, 0.88 - tc)  # keep a normal neck at the top of the stack
    u = np.where(t < tc, (t - tc) / w_lo, (t - tc) / w_hi)
    bump = np.where(np.abs(u) < 1.0, 0.5 * (1.0 + np.cos(np.pi * np.clip(u, -1, 1))), 0.0)
    d = d_normal + (d_max - d_normal) * bump
    return {"d": d.astype(np.float32), "d_normal": d_normal.astype(np.float32), "d_max": d_max, "bump": bump}


def build(c: Canvas, rng: np.random.Generator, fov: float, kind: str = "regular") -> dict:
    """Paint one case of ``kind`` into ``c``; return tissue set, HU tables (``ncct``, ``cect``) and structure info."""
    ranges = kind_ranges(kind)
    ts = TissueSet(TISSUES)
    g = c.grid
    z = g.z
    t = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    tor = paint_torso(c, ts, rng, fov, t)
    k = tor.k
    ztop, zbot = float(z.max()), float(z.min())
    cav = [ts["visceral_fat"]]

    # liver edge (patient right = +x), its inferior tip reaching into the upper slices
    c.ellipsoid(ts["liver"], (k * uniform(rng, 65, 85), k * uniform(rng, -15, 5), ztop + uniform(rng, 30, 70)),
                (k * uniform(rng, 55, 70), k * uniform(rng, 60, 80), uniform(rng, 70, 100)), rotation(uniform(rng, -0.6, -0.2)),
                Deform.random(rng, 0.14, k=4), only=cav)
    # kidneys (right one lower) with medulla and renal sinus fat at the medial hilum
    for side in (1, -1):
        zc = ztop - uniform(rng, 0, 35) - (15.0 if side == 1 else 0.0)
        cx, cy = side * k * uniform(rng, 62, 74), tor.yv + k * uniform(rng, 0, 10)
        semi = (k * uniform(rng, 21, 26), k * uniform(rng, 32, 40), uniform(rng, 45, 58))
        rot = rotation(side * uniform(rng, 0.45, 0.8), 0.0, side * 0.1)
        d = Deform.random(rng, 0.05)
        c.ellipsoid(ts["kidney_cortex"], (cx, cy, zc), semi, rot, d, only=cav + [ts["muscle"]])
        c.ellipsoid(ts["kidney_medulla"], (cx, cy, zc), tuple(s * 0.62 for s in semi), rot, d, only=[ts["kidney_cortex"]])
        hil = rot @ np.array([-side * 0.55 * semi[0], 0.0, 0.0])
        c.ellipsoid(ts["sinus_fat"], (cx + hil[0], cy + hil[1], zc), (semi[0] * 0.45, semi[1] * 0.35, semi[2] * 0.5), rot,
                    only=[ts["kidney_cortex"], ts["kidney_medulla"]])
    paint_bowel(c, ts, rng, tor, n=int(rng.integers(22, 34)), zspan=(zbot - 20, ztop + 20), vmin=-0.25)
    paint_colon(c, ts, rng, tor, z)
    paint_mesentery(c, ts, rng, tor, z)
    # IVC right-anterior of the spine
    one = np.ones_like(z)
    c.tube(ts["ivc"], z, k * uniform(rng, 24, 32) * one, (tor.front + k * uniform(rng, 4, 10)) * one,
           k * uniform(rng, 11, 15) * one, k * uniform(rng, 7, 10) * one, angle=uniform(rng, -0.3, 0.3))

    # aorta: outer wall, thrombus crescent, eccentric lumen, calcified arcs
    prof = aorta_profile(rng, t)
    R, Rn = prof["d"] / 2, prof["d_normal"] / 2
    e = uniform(rng, 0.9, 1.0)
    a, b = R / np.sqrt(e), R * np.sqrt(e)
    wall = uniform(rng, 1.2, 2.0)
    wave = np.sin(2 * np.pi * (t * uniform(rng, 0.4, 1.0) + uniform(rng, 0, 1)))
    cx = -k * uniform(rng, 10, 16) - 0.25 * (R - Rn) + 3.0 * wave
    cy = tor.front + uniform(rng, 2, 4) + b
    c.tube(ts["aortic_wall"], z, cx, cy, a, b)
    c.tube(ts["thrombus"], z, cx, cy, a - wall, b - wall)
    th = ((R - wall) - (Rn - wall)) * uniform(rng, *ranges["thrombus_fraction"])  # thrombus thickness, 0 outside the sac
    rl = (R - wall) - th
    psi = uniform(rng, 0, 2 * np.pi) + 0.6 * np.sin(2 * np.pi * (t * uniform(rng, 0.3, 0.8) + uniform(rng, 0, 1)))
    off = th * uniform(rng, 0.5, 0.9)
    c.tube(ts["lumen"], z, cx + off * np.cos(psi), cy + off * np.sin(psi), rl / np.sqrt(e), rl * np.sqrt(e),
           only=[ts["thrombus"]])
    _calcifications(c, ts, rng, z, cx, cy, a, b, wall, ranges["calcifications"], ranges["calc_arc_deg"])
    _hu(ts, rng, ranges["lumen_cect_hu"])
    info = {"kind": kind, "lumen_cect_hu": ts.lumen_cect, "d_max_mm": prof["d_max"], "d_normal_mm": float(prof["d_normal"].max()),
            "diameter_mm": [round(float(v), 3) for v in prof["d"]]}
    return {"tissues": ts, "phases": ("ncct", "cect"), "info": info}


def _calcifications(c: Canvas, ts: TissueSet, rng, z, cx, cy, a, b, wall, count=(3, 9), arc_deg=(15.0, 70.0)) -> None:
    """``count`` (integers' [lo, hi)) arcs of ``arc_deg`` degrees on the outer wall (band of ``wall + ~1.5`` mm),
    each over 5-35 mm of z."""
    n = int(rng.integers(*count))
    zv = c.grid.z
    for _ in range(n):
        zc, half = uniform(rng, float(z.min()), float(z.max())), uniform(rng, 2.5, 17.5)
        ang, width = uniform(rng, 0, 2 * np.pi), np.deg2rad(uniform(rng, *arc_deg)) / 2
        band = wall + uniform(rng, 1.0, 2.2)
        sel = np.abs(zv - zc) <= half
        if not sel.any():
            continue
        ext = float(max(a[sel].max(), b[sel].max())) + 1
        lo = (float(cx[sel].min()) - ext, float(cy[sel].min()) - ext, zc - half)
        hi = (float(cx[sel].max()) + ext, float(cy[sel].max()) + ext, zc + half)

        def fn(X, Y, Z, ang=ang, band=band, width=width):
            kk = np.nonzero((zv >= Z.ravel()[0]) & (zv <= Z.ravel()[-1]))[0]
            sh = (1, 1, -1)
            dx, dy = X - cx[kk].reshape(sh), Y - cy[kk].reshape(sh)
            aa, bb = a[kk].reshape(sh), b[kk].reshape(sh)
            r = np.sqrt((dx / aa) ** 2 + (dy / bb) ** 2)
            dang = np.angle(np.exp(1j * (np.arctan2(dy, dx) - ang)))
            return (r < 1.0) & (r > 1.0 - band / np.minimum(aa, bb)) & (np.abs(dang) < width)

        c.paint_mask(ts["calcification"], fn, lo, hi, only=[ts["aortic_wall"], ts["thrombus"]])


def _hu(ts: TissueSet, rng, lumen_cect_hu=(250.0, 400.0)) -> TissueSet:
    """Per-case HU of every tissue in both phases (NCCT plain, CECT arterial/early portal)."""
    fat = uniform(rng, -110, -90)
    lumen_cect = uniform(rng, *lumen_cect_hu)
    table = {  # name: (ncct, cect, texture amplitude)
        "skin": (30, 40, 5), "fat": (fat, fat, 6), "muscle": (uniform(rng, 43, 57), None, 6),
        "visceral_fat": (fat + uniform(rng, 0, 8), None, 8), "cortical": (uniform(rng, 600, 800), None, 60),
        "cancellous": (uniform(rng, 220, 280), None, 35), "disc": (uniform(rng, 70, 90), None, 6),
        "csf": (uniform(rng, 5, 15), None, 3), "bowel_wall": (uniform(rng, 30, 40), uniform(rng, 70, 100), 5),
        "bowel_fluid": (uniform(rng, 5, 20), None, 4), "gas": (uniform(rng, -930, -870), None, 25),
        "stool": (uniform(rng, -60, 10), None, 45),
        "kidney_cortex": (uniform(rng, 28, 36), uniform(rng, 150, 200), 5),
        "kidney_medulla": (uniform(rng, 25, 33), uniform(rng, 70, 100), 5), "sinus_fat": (fat + 10, fat + 10, 8),
        "liver": (uniform(rng, 52, 62), uniform(rng, 90, 120), 5), "ivc": (uniform(rng, 38, 46), uniform(rng, 110, 160), 3),
        "aortic_wall": (uniform(rng, 38, 46), uniform(rng, 60, 90), 3), "thrombus": (uniform(rng, 32, 38), None, 4),
        "lumen": (uniform(rng, 42, 48), lumen_cect, 2), "mesenteric_vessel": (42, lumen_cect * 0.6, 3), "calcification": (uniform(rng, 750, 1100), None, 120),
    }
    table["muscle"] = (table["muscle"][0], table["muscle"][0] + uniform(rng, 5, 12), 6)
    for name, (n, cc, tex) in table.items():
        ts.set("ncct", name, n, tex)
        ts.set("cect", name, n if cc is None else cc)
    ts.set("ncct", "air", -1000, 0)
    ts.set("cect", "air", -1000)
    ts.lumen_cect = lumen_cect
    return ts


def masks(tissue: np.ndarray, ts: TissueSet) -> dict[str, np.ndarray]:
    """``aorta`` (outer wall: wall + thrombus + lumen + calcification) and ``lumen`` as uint8 masks."""
    ids = np.zeros(len(ts.names), np.uint8)
    ids[[ts[n] for n in AORTA_TISSUES]] = 1
    return {"aorta": np.asfortranarray(ids[tissue]), "lumen": np.asfortranarray(tissue == ts["lumen"]).view(np.uint8)}


def write_heldout(out: str | Path, kinds: dict[str, int], seed: int = 0, size: int = 256, slices: int = 64) -> Path:
    """Write held-out labeled cases, ``kinds[kind]`` of each kind, into ``out``; return its datalist path.

    Case ``i`` (counted over the kinds in order) is case index ``HELDOUT_FIRST_INDEX + i`` of the generator
    (so never a training case of the same seed), id ``aaa_<kind>_<i>``, orientation RAS / LPS alternating.
    The datalist has one split, ``test``, with ``ncct``, ``cect``, ``aorta``, ``lumen`` and ``kind`` per entry.
    A folder holding the same request (``heldout_params.json``) is reused as it is.
    """
    from tools.data.phantoms import KEYS, _save, make_case  # lazy: tools.data.phantoms imports this module

    for kind in kinds:
        kind_ranges(kind)
    out = Path(out)
    params = {"kinds": {k: int(n) for k, n in kinds.items()}, "seed": int(seed), "size": int(size), "slices": int(slices),
              "first_index": HELDOUT_FIRST_INDEX}
    params_file, datalist = out / "heldout_params.json", out / "datalist.json"
    if datalist.is_file() and params_file.is_file() and json.loads(params_file.read_text()) == params:
        return datalist
    entries, i = [], 0
    for kind, n in kinds.items():
        for _ in range(int(n)):
            case_id = f"aaa_{kind}_{i:02d}"
            case = make_case("aaa", seed, HELDOUT_FIRST_INDEX + i, size, slices, ("RAS", "LPS")[i % 2],
                             build_kw={"kind": kind})
            (out / case_id).mkdir(parents=True, exist_ok=True)
            entry = {"case_id": case_id, "kind": kind}
            for key in KEYS["aaa"]:
                _save(case["arrays"][key], case["affine"], out / case_id / f"{key}.nii.gz")
                entry[key] = f"{case_id}/{key}.nii.gz"
            entries.append(entry)
            i += 1
    datalist.write_text(json.dumps({"test": entries}, indent=1))
    params_file.write_text(json.dumps(params, indent=1))
    return datalist
