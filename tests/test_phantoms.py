"""Tests of the CT phantom generator (`tools.data.phantoms`): HU statistics, masks, geometry, datalist,
determinism, ensure_phantoms and the CLI. Tiny grids; the 20 x 256^2 x 64 timing lives in
docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tools.data import phantoms
from tools.data.phantoms import (
    ABDOMEN_LABELS,
    HEART_LABELS,
    cli,
    ensure_phantoms,
    generate,
    make_case,
)
from tools.data.phantoms_abdomen import LABEL_HU_RANGE

REPO = Path(__file__).resolve().parents[1]


def _median(img, mask):
    assert mask.any(), "structure absent"
    return float(np.median(img[mask]))


def _tissue(case, name):
    ids = {v: k for k, v in case["tissue_names"].items()}
    return case["tissue"] == ids[name]


def _core(mask, px=2):
    """``mask`` eroded by ``px`` voxels in-plane (away from partial-volume edges), or ``mask`` if that empties it."""
    core = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1), bool), iterations=px)
    return core if core.any() else mask


def _world_centroid(mask, affine):
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.fixture(scope="module")
def aaa_cases():
    # 256 px in-plane (true 0.6-0.9 mm spacing) on a short stack: diameters are measured in mm
    return [make_case("aaa", 0, i, 256, 20, ("RAS", "LPS")[i % 2], with_tissue=True) for i in range(3)]


# ---------------------------------------------------------------------------------------------- aaa
def test_aaa_hu_medians(aaa_cases):
    for c in aaa_cases:
        T = lambda name, c=c: _core(_tissue(c, name))
        nc, ce = c["arrays"]["ncct"], c["arrays"]["cect"]
        assert nc.dtype == np.float32 and ce.dtype == np.float32
        assert 40 <= _median(nc, T("lumen")) <= 50  # blood ~45
        assert 30 <= _median(nc, T("thrombus")) <= 40  # thrombus ~35
        assert _median(nc, T("thrombus")) < _median(nc, T("lumen"))  # weak real cue
        calc = _tissue(c, "calcification")
        assert _median(nc, calc) > 400 and _median(ce, calc) > 400
        lumen_cect = _median(ce, T("lumen"))
        assert 250 <= lumen_cect <= 400 and abs(lumen_cect - c["info"]["lumen_cect_hu"]) < 10
        assert abs(_median(ce, T("thrombus")) - _median(nc, T("thrombus"))) < 4  # thrombus unchanged by contrast
        for img in (nc, ce):
            assert -115 <= _median(img, T("fat")) <= -85
            assert _median(img, T("gas")) < -800
            assert 550 <= _median(img, T("cortical")) <= 850
            assert 180 <= _median(img, T("cancellous")) <= 320
        assert 40 <= _median(nc, T("muscle")) <= 60
        for organ, gain in (("kidney_cortex", 100), ("liver", 25), ("ivc", 60)):  # enhanced in CECT
            assert _median(ce, T(organ)) > _median(nc, T(organ)) + gain, organ
        # noise: NCCT and CECT share the ideal image in fat, so their difference is noise only
        fat = _tissue(c, "visceral_fat")
        diff_sd = float(np.std((nc - ce)[fat]))
        expect = np.hypot(*c["info"]["noise_sigma"].values())
        assert 8 <= min(c["info"]["noise_sigma"].values()) and max(c["info"]["noise_sigma"].values()) <= 20
        assert abs(diff_sd - expect) / expect < 0.15
        assert float(np.median(nc[c["tissue"] == 0])) <= -990  # air outside the body


def test_aaa_masks_and_diameters(aaa_cases):
    for c in aaa_cases:
        aorta, lumen = c["arrays"]["aorta"], c["arrays"]["lumen"]
        assert aorta.dtype == np.uint8 and set(np.unique(aorta)) == {0, 1} and set(np.unique(lumen)) == {0, 1}
        assert not np.any(lumen > aorta), "lumen outside the aorta"
        dx, dy, _ = c["spacing"]
        d_eq = 2 * np.sqrt(aorta.sum(axis=(0, 1)) * dx * dy / np.pi)  # per slice, mm
        thrombus = (aorta.astype(int) - lumen).sum(axis=(0, 1))
        planned = np.asarray(c["info"]["diameter_mm"])
        assert np.all(np.abs(d_eq - planned) < 2.0)
        normal = planned <= c["info"]["d_normal_mm"] + 1e-3
        assert normal.any() and np.all((d_eq[normal] >= 15) & (d_eq[normal] <= 25))
        assert d_eq.max() <= 70 and d_eq.max() > 30
        sac = d_eq >= 30
        assert sac.any() and np.all(thrombus[sac] > 0), "thrombus missing in aneurysm slices"
        # eccentric lumen: its centroid is off the aortic centroid in the widest slice
        k = int(np.argmax(d_eq))
        off = np.linalg.norm((np.argwhere(lumen[:, :, k]).mean(0) - np.argwhere(aorta[:, :, k]).mean(0)) * dx)
        assert off > 2.0


# ---------------------------------------------------------------------------------------------- abdomen
def test_abdomen_labels_and_hu():
    c = make_case("abdomen", 0, 0, 256, 64, "LPS", with_tissue=True)
    lab, img = c["arrays"]["label"], c["arrays"]["image"]
    assert lab.dtype == np.uint8 and img.dtype == np.float32
    assert set(np.unique(lab)) == {0, *ABDOMEN_LABELS}  # every class somewhere, only AMOS ids
    for i, (lo, hi) in LABEL_HU_RANGE.items():
        assert lo <= _median(img, lab == i) <= hi, ABDOMEN_LABELS[i]
    assert -115 <= _median(img, _core(_tissue(c, "fat"))) <= -85
    assert 40 <= _median(img, _core(_tissue(c, "muscle"))) <= 70
    # organs on their anatomical sides/heights (world RAS: +x = patient right, +z = superior)
    cen = {i: _world_centroid(lab == i, c["affine"]) for i in (1, 2, 3, 6, 9, 11, 12, 14)}
    body_x = _world_centroid(c["arrays"]["image"] > -500, c["affine"])[0]
    for right in (2, 6, 9, 11):
        assert cen[right][0] > body_x, ABDOMEN_LABELS[right]
    for left in (1, 3, 12):
        assert cen[left][0] < body_x, ABDOMEN_LABELS[left]
    assert cen[14][2] < cen[2][2] < cen[11][2]  # bladder low, kidneys, adrenals high


def test_world_placement_ras_vs_lps():
    """Same case stored RAS and LPS: the label arrays are flips of each other, the affines map both to
    the same world anatomy, and the liver lies on the patient's right (RAS world x > body centre)."""
    ras = make_case("abdomen", 5, 1, 64, 24, "RAS")
    lps = make_case("abdomen", 5, 1, 64, 24, "LPS")
    assert nib.aff2axcodes(ras["affine"]) == ("R", "A", "S") and nib.aff2axcodes(lps["affine"]) == ("L", "P", "S")
    np.testing.assert_array_equal(ras["arrays"]["label"], lps["arrays"]["label"][::-1, ::-1, :])
    for c in (ras, lps):
        body_x = _world_centroid(c["arrays"]["image"] > -500, c["affine"])[0]
        liver = _world_centroid(c["arrays"]["label"] == 6, c["affine"])
        spleen = _world_centroid(c["arrays"]["label"] == 1, c["affine"])
        assert liver[0] > body_x > spleen[0]
    # the aaa aorta sits left of the midline (world x < body centre) in both storages
    for o in ("RAS", "LPS"):
        c = make_case("aaa", 5, 2, 64, 16, o)
        body_x = _world_centroid(c["arrays"]["ncct"] > -500, c["affine"])[0]
        assert _world_centroid(c["arrays"]["aorta"] > 0, c["affine"])[0] < body_x


# ---------------------------------------------------------------------------------------------- heart
def test_heart_small_grid():
    c = make_case("heart", 0, 0, 32, 32, "RAS", with_tissue=True)
    lab, img = c["arrays"]["label"], c["arrays"]["image"]
    assert lab.shape == img.shape == (32, 32, 32)
    assert set(np.unique(lab)) == {0, *HEART_LABELS}
    big = make_case("heart", 0, 1, 128, 32, "LPS", with_tissue=True)
    lab, img = big["arrays"]["label"], big["arrays"]["image"]
    for i in (1, 2, 6):  # left-heart blood pool and aorta ~350
        assert 280 <= _median(img, lab == i) <= 440
    assert abs(_median(img, lab == 2) - big["info"]["blood_hu"]) < 15
    assert 80 <= _median(img, lab == 5) <= 130  # myocardium ~100
    assert -850 <= _median(img, _core(_tissue(big, "lung"))) <= -750
    # myocardium wraps the LV: dilating the LV by one voxel in-plane mostly hits MYO
    lv = lab == 2
    ring = np.zeros_like(lv)
    for ax in (0, 1):
        ring |= np.roll(lv, 1, ax) | np.roll(lv, -1, ax)
    ring &= ~lv
    assert np.mean(lab[ring] == 5) > 0.5


def test_spacing_ranges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for an in phantoms.ANATOMIES:
            dxy, dz, _ = phantoms._geometry(an, rng, 256, 64)
            assert 0.6 <= dxy <= 0.9 and 1.0 <= dz <= 5.0
    dxy, dz, fov = phantoms._geometry("heart", rng, 32, 32)
    assert 4.8 <= dxy <= 7.2 and 154 <= fov <= 231  # small grids keep the field of view


# ---------------------------------------------------------------------------------------------- data set
def test_generate_datalist_split_unlabeled_orientation(tmp_path):
    dl = generate("aaa", 8, tmp_path / "aaa", seed=3, size=32, slices=8, unlabeled_fraction=0.25)
    data = json.loads(Path(dl).read_text())
    assert set(data) == {"training", "validation", "test"}
    ids = [e["case_id"] for s in data.values() for e in s]
    assert len(ids) == len(set(ids)) == 8 and all(len(s) for s in data.values())
    unlabeled = [e for s in data.values() for e in s if "lumen" not in e]
    assert len(unlabeled) == 2
    for split, entries in data.items():
        assert any("lumen" in e for e in entries), f"no labeled case in {split}"
        for e in entries:
            for key in ("ncct", "cect", "aorta", "lumen"):
                if key in e:
                    assert not Path(e[key]).is_absolute() and (tmp_path / "aaa" / e[key]).is_file()
            if "lumen" not in e:
                assert not (tmp_path / "aaa" / e["case_id"] / "lumen.nii.gz").exists()
    codes, shapes = set(), set()
    for e in data["training"] + data["validation"] + data["test"]:
        img = nib.load(tmp_path / "aaa" / e["ncct"])
        mask = nib.load(tmp_path / "aaa" / e["aorta"])
        assert img.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, mask.affine)
        codes.add(nib.aff2axcodes(img.affine))
        shapes.add(img.shape)
    assert codes == {("R", "A", "S"), ("L", "P", "S")} and shapes == {(32, 32, 8)}


def test_same_seed_identical_files(tmp_path):
    kw = {"size": 32, "slices": 8}
    a = generate("heart", 3, tmp_path / "a", seed=7, **kw).parent
    b = generate("heart", 3, tmp_path / "b", seed=7, **kw).parent
    c = generate("heart", 3, tmp_path / "c", seed=8, **kw).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 2
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "heart_000/image.nii.gz").read_bytes() != (c / "heart_000/image.nii.gz").read_bytes()


def test_ensure_phantoms_reuse_regenerate_refuse(tmp_path):
    out = tmp_path / "cache"
    p1 = ensure_phantoms("abdomen", out, cases=3, seed=0, size=32, slices=8)
    stamp = os.stat(out / "abdomen_000/image.nii.gz").st_mtime_ns
    assert ensure_phantoms("abdomen", out, cases=3, seed=0, size=32, slices=8) == p1
    assert os.stat(out / "abdomen_000/image.nii.gz").st_mtime_ns == stamp  # reused, not rewritten
    ensure_phantoms("abdomen", out, cases=4, seed=0, size=32, slices=8)  # own folder, other params
    data = json.loads(Path(p1).read_text())
    assert sum(len(v) for v in data.values()) == 4
    ensure_phantoms("abdomen", out, cases=2, seed=0, size=32, slices=8)
    assert not (out / "abdomen_003").exists()  # stale cases of the previous run removed
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and has no phantom_params.json"):
        ensure_phantoms("aaa", foreign, cases=3, size=32, slices=8)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_arguments():
    with pytest.raises(ValueError, match="anatomy"):
        make_case("liver", 0, 0)
    with pytest.raises(ValueError, match="cases"):
        generate("aaa", 0, "/nonexistent/never")
    with pytest.raises(ValueError, match="size"):
        generate("aaa", 2, "/nonexistent/never", size=16)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        generate("heart", 2, "/nonexistent/never", seed=-1)
    with pytest.raises(ValueError, match="orientation"):
        make_case("heart", 0, 0, 32, 8, orientation="RAI")
    with pytest.raises(ValueError, match="unlabeled_fraction"):
        generate("aaa", 2, "/nonexistent/never", unlabeled_fraction=1.5)
    assert not Path("/nonexistent/never").exists()


def test_cli_run_refuse_and_bad_argument(tmp_path, capsys):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tools.data.phantoms", "--anatomy", "heart", "--cases", "3", "--out", str(out),
           "--size", "32", "--slices", "8", "--seed", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr
    data = json.loads((out / "datalist.json").read_text())
    assert sum(len(v) for v in data.values()) == 3
    victim = out / "heart_000" / "image.nii.gz"
    before, stamp = victim.read_bytes(), os.stat(victim).st_mtime_ns
    again = subprocess.run(cmd[:-1] + ["2"], capture_output=True, text=True, cwd=REPO, check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr and "not empty" in again.stderr
    assert victim.read_bytes() == before and os.stat(victim).st_mtime_ns == stamp
    rerun = ["--anatomy", "heart", "--cases", "2", "--out", str(out), "--size", "32", "--slices", "8", "--seed", "2",
             "--overwrite", "--workers", "1"]
    assert cli(rerun) == 0  # asked to overwrite: rewritten, stale case folder of the old run removed
    assert victim.read_bytes() != before and not (out / "heart_002").exists()
    assert sum(len(v) for v in json.loads((out / "datalist.json").read_text()).values()) == 2
    assert cli(["--anatomy", "liver", "--cases", "2", "--out", str(tmp_path / "x")]) == 2
    assert "anatomy must be one of aaa, abdomen, heart; got 'liver'" in capsys.readouterr().err
    assert cli(["--anatomy", "aaa", "--cases", "0", "--out", str(tmp_path / "x")]) == 2
    assert "cases must be an integer >= 1" in capsys.readouterr().err
    assert cli(["--anatomy", "aaa", "--cases", "2", "--out", str(tmp_path / "x"), "--size", "16"]) == 2
    assert "size must be an integer >= 32" in capsys.readouterr().err
    assert cli(["--anatomy", "aaa", "--cases", "2", "--out", str(tmp_path / "x"), "--sise", "64"]) == 2
    assert "unknown argument --sise" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ensure_phantoms_concurrent_callers(tmp_path):
    """Two callers sharing one cache folder: one generates, the other waits and reuses it."""
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "shared_cache"
    with ThreadPoolExecutor(2) as ex:
        paths = list(ex.map(lambda _: ensure_phantoms("heart", out, cases=3, seed=0, size=32, slices=8), range(2)))
    assert paths[0] == paths[1]
    data = json.loads(Path(paths[0]).read_text())
    assert sorted(e["case_id"] for v in data.values() for e in v) == ["heart_000", "heart_001", "heart_002"]
    assert json.loads((out / "phantom_params.json").read_text())["complete"] is True


def test_generate_waits_for_the_folder_lock(tmp_path):
    """generate() itself takes the folder's lock: a second writer waits, so a folder is never mixed."""
    import threading
    import time

    from tools.data.phantoms import _lock, _lock_path

    out = tmp_path / "aaa"
    result = {}
    with _lock(_lock_path(out)):
        worker = threading.Thread(target=lambda: result.update(path=generate("aaa", 2, out, size=32, slices=8)))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive() and not out.exists()  # waiting for the lock, nothing written
    worker.join(timeout=120)
    assert result["path"] == out / "datalist.json" and json.loads((out / "phantom_params.json").read_text())["complete"]
