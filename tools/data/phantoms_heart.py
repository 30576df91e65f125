"""``heart`` phantom: cardiac CT angiography with 8 labelled structures (1 LA, 2 LV, 3 RA, 4 RV, 5 MYO,
6 AO, 7 PA, 8 LAA).

All sizes are true millimetres (a cardiac field of view of 154-230 mm truncates the chest laterally as a
real one does); on small grids the spacing grows instead (see `tools.data.phantoms`). The heart's long
axis runs from the base (right, posterior, superior) to the apex (left, anterior, inferior) in world
RAS coordinates (+x patient right, +y anterior, +z superior).
"""

from __future__ import annotations

import itertools

import numpy as np

from tools.data.phantoms_shapes import Canvas, Deform, rotation
from tools.data.phantoms_torso import (
    TORSO,
    TissueSet,
    Torso,
    paint_body,
    paint_spine,
    uniform,
)

HEART_TISSUES = {"la": 1, "lv": 2, "ra": 3, "rv": 4, "myo": 5, "ao": 6, "pa": 7, "laa": 8}
TISSUES = TORSO + ["lung", "lung_vessel", "liver", "mediastinum", "epicardial_fat", "rv_wall", "atrial_wall", "esophagus", "coronary"] + list(HEART_TISSUES)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _frame(u) -> np.ndarray:
    """Rotation whose first column is ``u`` (unit), the others completing a right-handed frame."""
    u = _unit(u)
    e2 = _unit(np.cross(u, [0.0, 0.0, 1.0]) if abs(u[2]) < 0.95 else np.cross(u, [1.0, 0.0, 0.0]))
    return np.stack([u, e2, np.cross(u, e2)], axis=1)


def build(c: Canvas, rng: np.random.Generator, fov: float) -> dict:
    ts = TissueSet(TISSUES)
    g = c.grid
    z = g.z
    u = lambda lo, hi: uniform(rng, lo, hi)
    zmid = 0.5 * float(z.min() + z.max())
    H = np.array([u(-12, 0), u(-5, 8), zmid + u(-8, 4)])
    sc = u(0.9, 1.1)
    # chest wall and spine (no psoas in the thorax)
    bx, by = H[0] + u(25, 40), H[1] - u(18, 30)
    A, B = u(140, 170), u(95, 115)
    s = np.ones_like(z) * np.float32(1.0)
    paint_body(c, ts, rng, (bx, by), A, B, B * u(0.95, 1.0), (2.0, u(8, 25), u(10, 18)), s)
    c.t[c.t == ts["visceral_fat"]] = ts["lung"]
    tor = Torso(A=A, B=B, Bp=B, k=1.0, yv=by - B + u(55, 65), cx=bx)
    t = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    paint_spine(c, ts, rng, tor, t, psoas=False)
    one = np.ones_like(z)
    # sternum and ribs
    ys = by + B - u(22, 30)
    c.tube(ts["cortical"], z, bx * one, ys * one, u(12, 16) * one, 6.0 * one)
    c.tube(ts["cancellous"], z, bx * one, ys * one, 10.0 * one, 4.0 * one)
    period, ph0 = u(30, 38), u(0, 40)
    for ang in np.deg2rad(np.arange(15, 360, 24)):
        if abs(np.sin(ang) + 1) < 0.15:  # spine region
            continue
        rx, ry = bx + (A - 28) * np.cos(ang), by + (B - 24) * np.sin(ang)
        on = ((z + ph0 + 12 * np.cos(ang) + 20 * np.sin(ang)) % period) < 13
        c.tube(ts["cortical"], z, rx * one, ry * one, np.where(on, 7.0, 0.0), 5.0 * one, angle=ang + np.pi / 2,
               only=[ts["lung"], ts["muscle"], ts["fat"]])
    # mediastinum (fat between the lungs), descending aorta, esophagus
    c.tube(ts["mediastinum"], z, (H[0] + u(0, 8)) * one, (H[1] + u(0, 8)) * one, u(50, 58) * one, u(52, 60) * one,
           angle=u(-0.6, -0.3), harmonics=[(2, 0.05, u(0, 6)), (3, 0.04, u(0, 6))], only=[ts["lung"]])
    c.tube(ts["mediastinum"], z, bx * one, (tor.front + 18) * one, 28 * one, 24 * one, only=[ts["lung"]])
    for _ in range(int(rng.integers(30, 50))):  # pulmonary vessels
        p = (bx + u(-0.85, 0.85) * A, by + u(-0.8, 0.8) * B, u(float(z.min()), float(z.max())))
        r = u(1.5, 4.5)
        c.ellipsoid(ts["lung_vessel"], p, (r, r, u(8, 25)), rotation(u(0, 3), u(-1, 1)), only=[ts["lung"]])
    # diaphragm domes below the heart: liver on the right (+x), spleen/stomach side left
    c.ellipsoid(ts["liver"], (H[0] + u(45, 60), H[1] - u(0, 15), H[2] - u(85, 100)), (u(95, 110), u(80, 95), u(60, 70)),
                None, Deform.random(rng, 0.04), only=[ts["lung"], ts["mediastinum"]])
    c.ellipsoid(ts["muscle"], (H[0] - u(50, 65), H[1] - u(10, 25), H[2] - u(95, 110)), (u(70, 80), u(70, 80), u(55, 65)),
                None, Deform.random(rng, 0.04), only=[ts["lung"], ts["mediastinum"]])
    rd = u(10, 13)
    c.tube(ts["ao"], z, (bx - u(18, 26)) * one, (tor.front + rd + 2) * one, rd * one, rd * one)
    c.tube(ts["esophagus"], z, (bx - 2) * one, (tor.front + 8) * one, 7 * one, 5 * one, only=[ts["mediastinum"]])

    # heart: long axis base -> apex (left, anterior, inferior)
    ax = _unit(np.array([-0.55, 0.5, -0.65]) + rng.normal(0, 0.06, 3))
    R = _frame(ax)
    d = lambda a=0.04: Deform.random(rng, a)
    c.ellipsoid(ts["epicardial_fat"], H + 8 * ax * sc, np.array([68, 60, 58]) * sc, R, d(0.05),
                only=[ts["mediastinum"], ts["lung"]])
    # right atrium, left atrium with its appendage
    ra = H + np.array([u(36, 44), -5, u(18, 26)]) * sc
    c.ellipsoid(ts["atrial_wall"], ra, np.array([27, 27, 32]) * sc, None, d())
    c.ellipsoid(ts["ra"], ra, np.array([24, 24, 29]) * sc, None, d(), only=[ts["atrial_wall"]])
    la = H + np.array([u(-10, 0), u(-42, -34), u(22, 32)]) * sc
    c.ellipsoid(ts["atrial_wall"], la, np.array([34, 22, 24]) * sc, rotation(u(-0.2, 0.2)), d(), exclude=[ts["ra"]])
    c.ellipsoid(ts["la"], la, np.array([31, 19, 21]) * sc, rotation(u(-0.2, 0.2)), d(), only=[ts["atrial_wall"]])
    laa_dir = _unit([-0.8, 0.6, u(-0.1, 0.2)])
    c.ellipsoid(ts["laa"], la + np.array([-30, 14, 4]) * sc, np.array([17, 7.5, 7.5]) * sc, _frame(laa_dir), d(0.08),
                exclude=[ts["la"], ts["ra"]])
    # right ventricle: crescent anterior-right of the LV (its septal part is overwritten by the myocardium)
    w = _unit(np.array([0.6, 0.8, 0.0]) - np.dot([0.6, 0.8, 0.0], ax) * ax)
    rv = H + 2 * ax * sc + 24 * w * sc
    Rrv = np.stack([ax, w, np.cross(ax, w)], axis=1)
    c.ellipsoid(ts["rv_wall"], rv, np.array([46, 21, 36]) * sc, Rrv, d(), exclude=[ts["ra"], ts["la"], ts["laa"]])
    c.ellipsoid(ts["rv"], rv, np.array([43, 18, 33]) * sc, Rrv, d(), only=[ts["rv_wall"]])
    # left ventricle: myocardial shell (~11 mm) around the cavity
    c.ellipsoid(ts["myo"], H + 12 * ax * sc, np.array([50, 32, 32]) * sc, R, d(0.03), exclude=[ts["ra"], ts["la"], ts["laa"]])
    c.ellipsoid(ts["lv"], H + 8 * ax * sc, np.array([40, 20.5, 20.5]) * sc, R, d(0.03), only=[ts["myo"]])
    # ascending aorta from the aortic root upwards, pulmonary trunk from the RV outflow to its bifurcation
    root = H + np.array([u(4, 10), u(0, 6), u(18, 24)]) * sc
    ra_ao = u(13, 16) * sc
    c.ellipsoid(ts["ao"], root, (ra_ao * 1.15,) * 3, None, d(0.03), exclude=[ts["lv"]])  # root sits on the LV outflow
    above = z >= root[2]
    c.tube(ts["ao"], z, root[0] + 0.12 * (z - root[2]), root[1] + 0.1 * (z - root[2]), np.where(above, ra_ao, 0.0),
           ra_ao * one)
    p0 = H + np.array([u(-12, -4), u(26, 34), u(16, 24)]) * sc
    p1 = H + np.array([u(-22, -14), u(2, 10), u(48, 56)]) * sc
    rp = u(12, 15) * sc
    for f in np.linspace(0, 1, 14):
        c.ellipsoid(ts["pa"], p0 + (p1 - p0) * f, (rp, rp, rp * 1.2), None, exclude=[ts["ao"]])
    for end, rr in ((p1 + np.array([48, -22, -4]) * sc, 0.75), (p1 + np.array([-32, -26, -4]) * sc, 0.75)):
        for f in np.linspace(0, 1, 12):
            c.ellipsoid(ts["pa"], p1 + (end - p1) * f, (rp * rr,) * 3, None, exclude=[ts["ao"], ts["la"]])
    # coronary arteries in the epicardial fat (unlabelled, as in MM-WHS): RCA in the right AV groove,
    # LAD in the anterior interventricular groove; drawn only where the grid resolves them
    if g.spacing[0] < 2.0:
        apex = H + 52 * ax * sc
        for path in ([root, root + np.array([22, 16, -4]) * sc, H + np.array([48, 26, -8]) * sc,
                      H + np.array([50, 12, -40]) * sc],
                     [root, root + np.array([-18, 18, -2]) * sc, H + np.array([-12, 42, -6]) * sc,
                      apex + np.array([4, 14, 0]) * sc]):
            for a, b in itertools.pairwise(path):
                for f in np.linspace(0, 1, 10):
                    c.ellipsoid(ts["coronary"], a + (b - a) * f, (u(1.4, 2.0),) * 3, None,
                                only=[ts["epicardial_fat"], ts["mediastinum"]])
    _hu(ts, rng)
    return {"tissues": ts, "phases": ("image",), "info": {"blood_hu": ts.blood}}


def _hu(ts: TissueSet, rng) -> None:
    u = lambda lo, hi: uniform(rng, lo, hi)
    fat = u(-110, -90)
    blood = u(300, 420)
    right = blood * u(0.85, 1.0)
    table = {
        "skin": (35, 5), "fat": (fat, 6), "muscle": (u(45, 60), 6), "visceral_fat": (fat, 6), "cortical": (u(600, 800), 60),
        "cancellous": (u(200, 280), 35), "disc": (u(70, 90), 6), "csf": (u(5, 15), 3), "bowel_wall": (40, 5),
        "bowel_fluid": (15, 4), "gas": (-900, 20), "stool": (-30, 40), "lung": (u(-840, -780), 25),
        "lung_vessel": (right * u(0.7, 0.9), 10), "mediastinum": (fat + u(0, 10), 8), "epicardial_fat": (fat + u(-5, 5), 6),
        "rv_wall": (u(80, 110), 6), "liver": (u(90, 120), 6), "atrial_wall": (u(80, 110), 6), "esophagus": (u(35, 50), 5),
        "la": (blood, 6), "lv": (blood, 6), "laa": (blood * u(0.9, 1.0), 8), "ao": (blood, 5), "ra": (right, 10),
        "rv": (right, 8), "pa": (right, 6), "myo": (u(90, 120), 6), "coronary": (blood * u(0.85, 1.0), 5),
    }
    ts.set("image", "air", -1000, 0)
    for name, (hu, tex) in table.items():
        ts.set("image", name, hu, tex)
    ts.blood = blood


def masks(tissue: np.ndarray, ts: TissueSet) -> dict[str, np.ndarray]:
    """``label``: 1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA (uint8, 0 background)."""
    lut = np.zeros(len(ts.names), np.uint8)
    for name, lab in HEART_TISSUES.items():
        lut[ts[name]] = lab
    return {"label": np.asfortranarray(lut[tissue])}
