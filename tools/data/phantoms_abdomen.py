"""``abdomen`` phantom: portal-venous abdominal CT with the 15 AMOS22 organ classes.

Organs are smooth randomly deformed ellipsoids (pancreas and duodenum: chains of blobs along a curve)
at anatomical positions in world RAS mm (+x = patient right: liver, gall bladder, IVC, right kidney and
right adrenal have x > 0). Heights are fractions ``t`` of the stack (0 pelvis, 1 upper abdomen /
lung bases); in-plane sizes scale with the patient scale ``k``. See `tools.data.phantoms`.
"""

from __future__ import annotations

import numpy as np

from tools.data.phantoms_shapes import Canvas, Deform, rotation
from tools.data.phantoms_torso import (
    TORSO,
    TissueSet,
    paint_bowel,
    paint_torso,
    uniform,
)

# tissue name -> AMOS22 label id (tissues of one organ share its id; torso tissues are background 0)
ORGAN_TISSUES = {
    "spleen": 1, "kidney_cortex_r": 2, "kidney_medulla_r": 2, "kidney_cortex_l": 3, "kidney_medulla_l": 3,
    "gallbladder": 4, "esophagus": 5, "liver": 6, "stomach_wall": 7, "stomach_content": 7, "stomach_gas": 7,
    "aorta": 8, "ivc": 9, "pancreas": 10, "adrenal_r": 11, "adrenal_l": 12, "duodenum_wall": 13, "duodenum_content": 13,
    "bladder_wall": 14, "urine": 14, "prostate_uterus": 15,
}
TISSUES = TORSO + ["lung", "vessel", "renal_sinus"] + list(ORGAN_TISSUES)
# expected median HU of every label (for tests and users): per-case HU are drawn inside these ranges
LABEL_HU_RANGE = {1: (95, 140), 2: (120, 200), 3: (120, 200), 4: (0, 25), 5: (30, 70), 6: (90, 130), 7: (-200, 90),
                  8: (140, 220), 9: (110, 180), 10: (70, 120), 11: (25, 95), 12: (25, 95), 13: (0, 90), 14: (0, 30),
                  15: (35, 110)}


def build(c: Canvas, rng: np.random.Generator, fov: float) -> dict:
    ts = TissueSet(TISSUES)
    g = c.grid
    z = g.z
    z0, E = float(z.min()), max(float(z.max() - z.min()), 1e-6)
    t = (z - z0) / E

    def zt(frac: float) -> float:  # stack fraction -> world z
        return z0 + frac * E

    tor = paint_torso(c, ts, rng, fov, t)
    k, A, yv, front = tor.k, tor.A, tor.yv, tor.front
    vmin = 0.8 * g.spacing[0]  # smallest semi-axis: keep small organs visible on coarse grids
    cav = [ts["visceral_fat"]]

    def blob(name, centre, semi, yaw=0.0, pitch=0.0, amount=0.07, only=None):
        semi = tuple(max(s, vmin) for s in semi)
        c.ellipsoid(ts[name], centre, semi, rotation(yaw, pitch), Deform.random(rng, amount),
                    only=cav if only is None else only)

    u = lambda lo, hi: uniform(rng, lo, hi)
    # lung bases (posterior, top of the stack)
    for side in (1, -1):  # posterior costophrenic recesses, lateral to the spine
        blob("lung", (side * A * u(0.45, 0.55), yv - k * u(5, 15), zt(1.0) + u(10, 25)), (k * 38, k * 28, u(30, 40)),
             yaw=side * 0.4, amount=0.05, only=cav + [ts["muscle"]])
    # liver: right lobe + left lobe
    blob("liver", (k * u(55, 70), k * u(-5, 10), zt(u(0.83, 0.9))), (k * u(70, 85), k * u(70, 85), E * u(0.15, 0.19)),
         yaw=u(-0.3, 0.0))
    blob("liver", (-k * u(5, 20), k * u(40, 55), zt(u(0.86, 0.92))), (k * u(38, 48), k * u(20, 28), E * u(0.07, 0.1)),
         yaw=u(-0.3, 0.2), only=cav + [ts["liver"]])
    blob("gallbladder", (k * u(35, 50), k * u(35, 50), zt(u(0.7, 0.76))), (k * u(12, 16), k * u(16, 22), u(25, 35)),
         yaw=u(0.3, 0.8), only=cav + [ts["liver"]])
    blob("spleen", (-k * u(80, 90), k * u(-45, -30), zt(u(0.82, 0.88))), (k * u(18, 24), k * u(45, 55), E * u(0.07, 0.09)),
         yaw=u(0.7, 1.0))
    # stomach: wall, content, gas cap (anterior = +y)
    sc = (-k * u(35, 50), k * u(25, 40), zt(u(0.84, 0.9)))
    ss = (k * u(38, 48), k * u(28, 36), E * u(0.08, 0.1))
    d = Deform.random(rng, 0.08)
    yaw = u(-0.6, -0.2)
    c.ellipsoid(ts["stomach_wall"], sc, ss, rotation(yaw), d, only=cav + [ts["liver"]])  # indents the left lobe
    c.ellipsoid(ts["stomach_content"], sc, tuple(s - 4 * k for s in ss), rotation(yaw), d, only=[ts["stomach_wall"]])
    c.ellipsoid(ts["stomach_gas"], (sc[0], sc[1] + 0.6 * ss[1], sc[2]), (ss[0] * 0.6, ss[1] * 0.45, ss[2] * 0.6),
                rotation(yaw), only=[ts["stomach_content"]])
    # kidneys (right lower), adrenals above-medial
    for side, tag, tz in ((1, "r", u(0.58, 0.64)), (-1, "l", u(0.63, 0.69))):
        cx, cy, cz = side * k * u(62, 74), yv + k * u(0, 10), zt(tz)
        semi = (k * u(21, 26), k * u(32, 40), u(48, 58))
        rot = rotation(side * u(0.45, 0.8), 0.0, side * 0.1)
        dd = Deform.random(rng, 0.05)
        c.ellipsoid(ts[f"kidney_cortex_{tag}"], (cx, cy, cz), semi, rot, dd, only=cav + [ts["muscle"]])
        c.ellipsoid(ts[f"kidney_medulla_{tag}"], (cx, cy, cz), tuple(s * 0.62 for s in semi), rot, dd,
                    only=[ts[f"kidney_cortex_{tag}"]])
        hil = rot @ np.array([-side * 0.55 * semi[0], 0.0, 0.0])
        c.ellipsoid(ts["renal_sinus"], (cx + hil[0], cy + hil[1], cz), (semi[0] * 0.45, semi[1] * 0.35, semi[2] * 0.5), rot,
                    only=[ts[f"kidney_cortex_{tag}"], ts[f"kidney_medulla_{tag}"]])
        blob(f"adrenal_{tag}", (side * k * u(30, 40), yv + k * u(12, 20), cz + semi[2] + u(5, 15)),
             (max(k * 5, 1.2 * g.spacing[0]), k * u(12, 16), u(14, 20)), yaw=side * u(0.2, 0.5), amount=0.04,
             only=cav + [ts["muscle"], ts["liver"], ts["spleen"]])
    # pancreas: blobs from the head (right, lower) to the tail (left, higher, near the spleen)
    n = 9
    head = np.array([k * u(25, 35), front + k * u(30, 40), zt(u(0.7, 0.74))])
    tail = np.array([-k * u(70, 80), front + k * u(5, 15), head[2] + u(15, 30)])
    bend = k * u(15, 25)
    for i, s in enumerate(np.linspace(0, 1, n)):
        p = head + (tail - head) * s
        p[1] += bend * np.sin(np.pi * s)
        r = k * (14 - 5 * s) * u(0.85, 1.1)
        blob("pancreas", tuple(p), (r, r * 0.75, u(10, 16)), yaw=u(0, np.pi), amount=0.12)
    # duodenum: C-loop around the pancreatic head
    for i, ang in enumerate(np.linspace(0.5 * np.pi, -0.6 * np.pi, 8)):
        ctr = head + np.array([k * 28 * np.cos(ang) + k * 5, k * 22 * np.sin(ang), -E * 0.03 * np.cos(ang * 0.5)])
        r = k * u(9, 12)
        blob("duodenum_wall", tuple(ctr), (r, r, u(12, 18)), amount=0.05)
        blob("duodenum_content", tuple(ctr), (r * 0.6, r * 0.6, u(8, 12)), amount=0.05, only=[ts["duodenum_wall"]])
    one = np.ones_like(z)
    # pelvis: bladder, prostate (male) or uterus (female), iliac wings
    bc = (k * u(-5, 5), k * u(30, 45), zt(u(0.05, 0.1)))
    bs = (k * u(30, 42), k * u(24, 32), u(28, 40))
    dd = Deform.random(rng, 0.05)
    c.ellipsoid(ts["bladder_wall"], bc, bs, None, dd, only=cav + [ts["muscle"]])
    c.ellipsoid(ts["urine"], bc, tuple(s - 3 * k for s in bs), None, dd, only=[ts["bladder_wall"]])
    if rng.random() < 0.5:  # prostate: posterior-inferior of the bladder
        blob("prostate_uterus", (bc[0], bc[1] - bs[1] * 0.8, bc[2] - bs[2] * 0.7), (k * 20, k * 16, u(18, 24)),
             only=cav + [ts["muscle"]])
    else:  # uterus: posterior-superior of the bladder
        blob("prostate_uterus", (bc[0], bc[1] - bs[1] * 0.6, bc[2] + bs[2] * 0.8), (k * 32, k * 22, u(30, 40)),
             yaw=u(-0.3, 0.3), only=cav + [ts["muscle"], ts["bladder_wall"]])
    for side in (1, -1):
        wing = {"yaw": side * u(0.5, 0.8), "amount": 0.04, "only": cav + [ts["muscle"]]}
        ic = (side * k * u(70, 80), yv + k * u(-5, 5), zt(u(0.16, 0.22)))
        isemi = (k * u(9, 12), k * u(40, 50), E * u(0.06, 0.1))
        blob("cortical", ic, isemi, **wing)
        blob("cancellous", ic, tuple(s * 0.7 for s in isemi), **{**wing, "only": [ts["cortical"]]})
    # bowel: colon frame and small-bowel loops fill the remaining cavity
    paint_bowel(c, ts, rng, tor, n=int(rng.integers(20, 32)), zspan=(zt(0.12), zt(0.7)), vmin=-0.3)
    # great vessels: aorta (bifurcating into unlabeled iliac arteries), IVC (iliac veins below)
    t_bif = u(0.24, 0.32)
    ra = max(u(9.0, 12.0) * max(k, 0.7), vmin)
    acx = -k * u(10, 16)
    acy = front + 3 + ra
    c.tube(ts["aorta"], z, acx * one, acy * one, np.where(t >= t_bif, ra, 0.0), ra * 0.95)
    t_ivc = t_bif - u(0.02, 0.05)
    rv = max(k * u(11, 14), vmin)
    c.tube(ts["ivc"], z, k * u(22, 30) * one, (front + k * u(4, 10)) * one, np.where(t >= t_ivc, rv, 0.0), rv * 0.7)
    for side in (1, -1):
        spread = np.clip(t_bif - t, 0, None) * E * 0.45
        c.tube(ts["vessel"], z, acx + side * spread, acy - 0.3 * spread, np.where(t < t_bif, ra * 0.65, 0.0), ra * 0.65)
    # esophagus at the top (hiatus), anterior-left of the aorta
    re_ = max(k * 8, vmin)
    ecx, ecy = acx - 0.3 * ra - u(0, 4) * k, acy + ra + re_ * 0.7 + 2
    c.tube(ts["esophagus"], z, ecx * one, ecy * one, np.where(t > u(0.85, 0.9), re_, 0.0), max(k * 6, vmin),
           exclude=[ts["cortical"], ts["cancellous"], ts["disc"], ts["aorta"]])
    _hu(ts, rng)
    return {"tissues": ts, "phases": ("image",), "info": {}}


def _hu(ts: TissueSet, rng) -> None:
    u = lambda lo, hi: uniform(rng, lo, hi)
    fat = u(-110, -90)
    table = {
        "skin": (35, 5), "fat": (fat, 6), "muscle": (u(50, 62), 6), "visceral_fat": (fat + u(0, 8), 8),
        "cortical": (u(600, 800), 60), "cancellous": (u(220, 280), 35), "disc": (u(70, 90), 6), "csf": (u(5, 15), 3),
        "bowel_wall": (u(70, 100), 6), "bowel_fluid": (u(5, 25), 4), "gas": (u(-930, -870), 25), "stool": (u(-60, 10), 45),
        "lung": (u(-870, -820), 30), "vessel": (u(150, 190), 4), "renal_sinus": (fat + 10, 8),
        "spleen": (u(105, 130), 6), "kidney_cortex_r": (u(150, 190), 6), "kidney_medulla_r": (u(130, 170), 6),
        "gallbladder": (u(5, 15), 3), "esophagus": (u(40, 60), 6), "liver": (u(95, 120), 7), "stomach_wall": (u(60, 85), 5),
        "stomach_content": (u(5, 25), 6), "stomach_gas": (u(-930, -870), 25), "aorta": (u(150, 200), 4),
        "ivc": (u(120, 160), 5), "pancreas": (u(80, 105), 14), "adrenal_r": (u(55, 75), 5), "duodenum_wall": (u(60, 85), 5),
        "duodenum_content": (u(5, 30), 6), "bladder_wall": (u(40, 60), 4), "urine": (u(3, 15), 3),
        "prostate_uterus": (u(45, 95), 8),
    }
    table["kidney_cortex_l"], table["kidney_medulla_l"] = table["kidney_cortex_r"], table["kidney_medulla_r"]
    table["adrenal_l"] = table["adrenal_r"]
    ts.set("image", "air", -1000, 0)
    for name, (hu, tex) in table.items():
        ts.set("image", name, hu, tex)


def masks(tissue: np.ndarray, ts: TissueSet) -> dict[str, np.ndarray]:
    """``label``: AMOS22 ids (uint8, 0 background)."""
    lut = np.zeros(len(ts.names), np.uint8)
    for name, lab in ORGAN_TISSUES.items():
        lut[ts[name]] = lab
    return {"label": np.asfortranarray(lut[tissue])}
