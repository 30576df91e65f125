"""Abdominal phantoms (`aaa` and `abdomen`) for `tools.data.phantoms`: torso, spine and organs.

World coordinates are RAS mm (+x patient right, +y anterior, +z superior) with the body centred on
(0, 0) in-plane; ``t = (z - z_min) / (z_max - z_min)`` is the height in the stack (0 inferior,
1 superior). In-plane sizes of the body and organs are multiplied by the patient scale ``k`` (the body
is fitted into the field of view, see `tools.data.phantoms`); the aorta of the ``aaa`` anatomy keeps
true millimetres so that its diameter profile (normal 15-25 mm, sac up to 70 mm) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tools.data.phantoms_shapes import Canvas, Deform, rotation


class TissueSet:
    """Named tissue ids (0 = air) with per-case HU per phase and texture amplitude (HU)."""

    def __init__(self, names: list[str]):
        self.names = ["air", *names]
        self.id = {n: i for i, n in enumerate(self.names)}
        self.hu: dict[str, np.ndarray] = {}
        self.tex = np.zeros(len(self.names), np.float32)

    def set(self, phase: str, name: str, hu: float, tex: float | None = None) -> None:
        lut = self.hu.setdefault(phase, np.full(len(self.names), -1000.0, np.float32))
        lut[self.id[name]] = hu
        if tex is not None:
            self.tex[self.id[name]] = tex

    def __getitem__(self, name: str) -> int:
        return self.id[name]


TORSO = ["skin", "fat", "muscle", "visceral_fat", "cortical", "cancellous", "disc", "csf", "bowel_wall", "bowel_fluid",
         "gas", "stool"]


@dataclass
class Torso:
    """Per-case torso geometry (mm, world RAS) shared by the abdominal builders."""

    A: float  # lateral body half-width
    B: float  # anterior half-depth
    Bp: float  # posterior half-depth
    k: float  # patient scale (A / 150 mm)
    yv: float  # vertebral body centre y
    front: float = 0.0  # y of the anterior surface of the vertebral bodies
    cx: float = 0.0  # x of the body/spine midline
    s: np.ndarray = field(repr=False, default=None)  # body scale per slice


def uniform(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def paint_torso(c: Canvas, ts: TissueSet, rng: np.random.Generator, fov: float, t: np.ndarray) -> Torso:
    """Body outline, skin, subcutaneous fat, muscle wall, visceral fat (cavity), paraspinal muscles,
    psoas and the lumbar spine (vertebral bodies with cortical ring, discs, canal, posterior elements)."""
    A = min(0.46 * fov * uniform(rng, 0.86, 1.0), uniform(rng, 150, 180))  # fit the FOV, adult size at most
    B = A * uniform(rng, 0.66, 0.78)
    Bp = B * uniform(rng, 0.88, 0.96)
    k = A / 150.0
    # per-slice body scale: slow change with height plus a gentle random wave
    s = (1.0 + 0.05 * (t - 0.5) + 0.02 * np.sin(2 * np.pi * (t * uniform(rng, 0.5, 1.5) + uniform(rng, 0, 1)))).astype(np.float32)
    skin = 2.0 * max(k, 0.5)
    fat = k * uniform(rng, 10, 35)
    mus = k * uniform(rng, 8, 14)
    paint_body(c, ts, rng, (0.0, 0.0), A, B, Bp, (skin, fat, mus), s)
    torso = Torso(A=A, B=B, Bp=Bp, k=k, yv=0.0, s=s)
    torso.yv = -Bp + k * uniform(rng, 62, 72)
    paint_spine(c, ts, rng, torso, t)
    return torso


def paint_body(c: Canvas, ts: TissueSet, rng, centre, A: float, B: float, Bp: float, layers, s: np.ndarray) -> None:
    """Fill ``c`` with the body cross-section (superellipse, flatter posteriorly, random harmonics) and its
    layers: skin, subcutaneous ``fat``, ``muscle`` wall, then ``visceral_fat`` (cavity). ``layers``: the
    thicknesses (mm) of skin, fat and muscle at the lateral edge; ``s``: body scale per slice."""
    g = c.grid
    X, Y = g.x[:, None] - np.float32(centre[0]), g.y[None, :] - np.float32(centre[1])
    u = X / np.float32(A)
    v = np.where(Y > 0, Y / np.float32(B), Y / np.float32(Bp))
    p = np.where(Y > 0, np.float32(2.2), np.float32(2.9))
    rho = (np.abs(u) ** p + np.abs(v) ** p) ** (1.0 / p)
    phi = np.arctan2(v, u)
    h = np.ones_like(rho)
    for n in (2, 3, 4, 5):
        h += np.float32(rng.uniform(0, 0.025)) * np.cos(n * phi + np.float32(rng.uniform(0, 2 * np.pi)))
    rho = (rho / h).astype(np.float32)
    # muscle thicker laterally/posteriorly than at the anterior midline (linea alba)
    mus_w = (1.0 - 0.55 * np.clip(np.sin(phi), 0, None) ** 8).astype(np.float32)
    skin, fat, mus = layers
    th1, th2 = 1 - skin / A, 1 - (skin + fat) / A
    level = np.zeros(g.shape, np.uint8)
    r3 = rho[:, :, None]
    for thr in (1.0, th1, th2):
        level += r3 < (thr * s)[None, None, :]
    level += r3 < (th2 - mus * mus_w / A)[:, :, None] * s[None, None, :]
    lut = np.array([0, ts["skin"], ts["fat"], ts["muscle"], ts["visceral_fat"]], np.uint8)
    c.t[...] = lut[level]


def paint_spine(c: Canvas, ts: TissueSet, rng, tor: Torso, t: np.ndarray, psoas: bool = True) -> None:
    g, k, yv, x0 = c.grid, tor.k, tor.yv, tor.cx
    z = g.z
    # paraspinal muscles and psoas (psoas grows inferiorly)
    for side in (-1, 1):
        c.tube(ts["muscle"], z, x0 + side * k * 32, yv - k * 45, k * 26 * (1 + 0.05 * np.sin(t * 3 + side)), k * 20,
               angle=side * 0.25, harmonics=[(2, uniform(rng, 0, 0.06), uniform(rng, 0, 6)), (3, uniform(rng, 0, 0.04), 1.0)])
        a = k * (7 + 13 * (1 - t)) * psoas
        c.tube(ts["muscle"], z, x0 + side * k * (24 + 10 * (1 - t)), yv + k * 2 - k * 4 * (1 - t), a, a * 0.8, angle=side * 0.5,
               only=[ts["visceral_fat"], ts["muscle"]])
    # vertebral levels: bodies ~30 mm high separated by ~9 mm discs
    period = uniform(rng, 34, 40)
    phase = uniform(rng, 0, period)
    in_disc = ((z - z.min() + phase) % period) < 9.0
    wb, hb = k * uniform(rng, 19, 23), k * uniform(rng, 15, 18)
    tor.front = yv + hb
    cort = max(2.0, 1.1 * g.spacing[0])
    ones = np.ones_like(z)
    # vertebral body (cortical ring, cancellous core) or disc
    c.tube(ts["cortical"], z, x0, yv, wb * ones, hb * ones)
    c.tube(ts["cancellous"], z, x0, yv, (wb - cort) * ones, (hb - cort) * ones)
    c.tube(ts["disc"], z, x0, yv, np.where(in_disc, wb + 0.5, 0.0), np.where(in_disc, hb + 0.5, 0.0))
    # posterior arch with canal, spinous and transverse processes
    yc = yv - hb - k * 11
    c.tube(ts["cortical"], z, x0, yc, k * 16 * ones, k * 14 * ones)
    c.tube(ts["cancellous"], z, x0, yc, (k * 16 - cort) * ones, (k * 14 - cort) * ones)
    c.tube(ts["csf"], z, x0, yc + k * 1, k * 9 * ones, k * 8 * ones)
    spin = np.where(in_disc, 0.0, k * 5.0)
    c.tube(ts["cortical"], z, x0, yc - k * 22, spin, k * 14 * ones)
    trans = np.where(((z - z.min() + phase) % period) > 20.0, k * 28.0, 0.0)
    c.tube(ts["cortical"], z, x0, yc + k * 4, trans, k * 5 * ones)


def paint_bowel(c: Canvas, ts: TissueSet, rng, tor: Torso, n: int, zspan: tuple[float, float], vmin: float = -0.2,
                gas_share: float = 0.4) -> None:
    """``n`` bowel loops (wall + fluid / gas / stool content) in the anterior cavity within world z ``zspan``."""
    k = tor.k
    for _ in range(n):
        cx = uniform(rng, -0.7, 0.7) * tor.A
        cy = uniform(rng, vmin, 0.75) * tor.B
        r = k * uniform(rng, 9, 20)
        cz = uniform(rng, *zspan)
        semi = (r, r * uniform(rng, 0.6, 1.0), uniform(rng, 15, 60))
        rot = rotation(uniform(rng, 0, np.pi), uniform(rng, -0.8, 0.8))
        d = Deform.random(rng, 0.1)
        c.ellipsoid(ts["bowel_wall"], (cx, cy, cz), semi, rot, d, only=[ts["visceral_fat"]])
        inner = tuple(s - 2.5 * max(k, 0.6) for s in semi)
        kind = rng.random()
        content = ts["gas"] if kind < gas_share else (ts["stool"] if kind < gas_share + 0.2 else ts["bowel_fluid"])
        c.ellipsoid(content, (cx, cy, cz), inner, rot, d, only=[ts["bowel_wall"]])
        if content == ts["bowel_fluid"] and rng.random() < 0.5:  # small gas bubble floating anteriorly
            c.ellipsoid(ts["gas"], (cx, cy + 0.5 * inner[1], cz), (inner[0] * 0.5, inner[1] * 0.35, inner[2] * 0.5), rot,
                        only=[ts["bowel_fluid"]])


def paint_colon(c: Canvas, ts: TissueSet, rng, tor: Torso, z: np.ndarray) -> None:
    """Ascending (patient right, +x) and descending (left) colon in the flanks: wall with gas and stool."""
    k, one = tor.k, np.ones_like(z)
    for side in (1, -1):
        cx = side * tor.A * uniform(rng, 0.55, 0.68) + 3 * k * np.sin(z / uniform(rng, 15, 30))
        cy = tor.B * uniform(rng, -0.15, 0.15) + 4 * k * np.cos(z / uniform(rng, 15, 30))
        r = k * uniform(rng, 14, 22) * (1 + 0.15 * np.sin(z / uniform(rng, 6, 10)))  # haustra
        c.tube(ts["bowel_wall"], z, cx, cy, r, r * 0.85, only=[ts["visceral_fat"]])
        c.tube(ts["stool"], z, cx, cy, r - 2.5 * k, r * 0.85 - 2.5 * k, only=[ts["bowel_wall"]])
        c.tube(ts["gas"], z, cx, cy + r * 0.35, (r - 3 * k) * 0.8 * (rng.random() < 0.7) * one, r * 0.4,
               only=[ts["stool"]])


def paint_mesentery(c: Canvas, ts: TissueSet, rng, tor: Torso, z: np.ndarray, n: int = 14) -> None:
    """Small mesenteric vessels (2-4 mm, enhancing) running obliquely through the visceral fat."""
    for _ in range(n):
        p = (uniform(rng, -0.4, 0.4) * tor.A, uniform(rng, -0.1, 0.6) * tor.B, uniform(rng, float(z.min()), float(z.max())))
        r = max(uniform(rng, 1.2, 2.2), 0.6 * c.grid.spacing[0])
        c.ellipsoid(ts["mesenteric_vessel"], p, (r, r, uniform(rng, 20, 60)), rotation(uniform(rng, 0, 3), uniform(rng, -0.6, 0.6)),
                    only=[ts["visceral_fat"]])
