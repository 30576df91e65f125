"""Tests of the real-data preparation CLIs (tools/aortadiff/prepare_data.py, prepare_amos.py, prepare_cardiac.py).

Fake data-set layouts are built in tmp_path from real NIfTI files: tiny synthetic arrays with real
affines, and the real files of ../shared/realdata (the ``realdata`` fixture of conftest.py skips those
tests with a message when ../shared is not beside the checkout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tools.data.label_maps import MMWHS_TO_HEART, TOTALSEG_V2_TO_AMOS, remap_labels
from tools.aortadiff.prepare_data import find_case_files, prepare_aaa
from tools.metrics.overlap import mask_dice
from tools.abdomen.prepare_data import prepare_amos
from tools.cardiac.prepare_data import prepare_cardiac
from tools.data.splits import patient_of, split_by_patient

REPO = Path(__file__).resolve().parents[1]

RAS = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 20.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
LPS = np.array([[-0.7, 0, 0, 12.0], [0, -0.7, 0, 5.0], [0, 0, 3.0, 7.0], [0, 0, 0, 1]])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = RAS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _ball(shape=(12, 12, 6), center=(6, 6, 3), radius=3.0) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    return (dist <= radius).astype(np.uint8)


def _load_split(datalist: Path) -> dict:
    return json.loads(datalist.read_text())


def _resolve(datalist: Path, rel: str) -> Path:
    assert not Path(rel).is_absolute(), f"path {rel} should be relative to the datalist folder"
    path = (datalist.parent / rel).resolve()
    assert path.is_file(), f"{rel} does not resolve to a file from {datalist.parent}"
    return path


def _assert_patient_split(content: dict, patient_regex: str | None = None) -> None:
    seen: dict[str, str] = {}
    for split in ("training", "validation", "test"):
        for entry in content[split]:
            patient = patient_of(entry["case_id"], patient_regex)
            assert seen.setdefault(patient, split) == split, f"patient {patient} in {seen[patient]} and {split}"


# ---------------------------------------------------------------------------------------------- splits / maps
def test_split_by_patient_groups_and_seeds():
    ids = [f"P{p:02d}_{s}" for p in range(10) for s in "ab"]
    split = split_by_patient(ids, 0.2, 0.1, seed=3, patient_regex=r"^(P\d+)_")
    assert sorted(sum(split.values(), [])) == sorted(ids)
    assert [len(split[s]) for s in ("training", "validation", "test")] == [14, 4, 2]  # 7/2/1 patients, 2 scans each
    _assert_patient_split({s: [{"case_id": c} for c in v] for s, v in split.items()}, r"^(P\d+)_")
    assert split == split_by_patient(ids, 0.2, 0.1, seed=3, patient_regex=r"^(P\d+)_")
    assert split != split_by_patient(ids, 0.2, 0.1, seed=4, patient_regex=r"^(P\d+)_")
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(ids, 1.2)
    with pytest.raises(ValueError, match="cannot fill"):
        split_by_patient(["a", "b"], 0.3, 0.3)


def test_remap_labels_table_numpy_and_metatensor():
    import torch  # imported here: the preparation CLIs and the other tests need neither torch nor MONAI
    from monai.data import MetaTensor

    from tools.data.label_maps import RemapLabelsd  # built on first access (MONAI)

    src = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 19, 21, 22, 52, 63, 10, 18, 64, 117], dtype=np.uint8)
    expected = np.array([0, 1, 2, 3, 4, 6, 7, 10, 11, 12, 5, 13, 14, 15, 8, 9, 0, 0, 0, 0])
    np.testing.assert_array_equal(remap_labels(src, TOTALSEG_V2_TO_AMOS), expected)
    meta = MetaTensor(torch.tensor(src[None], dtype=torch.float32), affine=torch.tensor(LPS))
    out = RemapLabelsd("label", TOTALSEG_V2_TO_AMOS)({"label": meta})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out[0].numpy(), expected)
    np.testing.assert_allclose(out.affine.numpy(), LPS)
    with pytest.raises(ValueError, match="non-integer"):
        remap_labels(np.array([0.5, 1.0]), TOTALSEG_V2_TO_AMOS)
    by_name = RemapLabelsd("label", "TOTALSEG_V2_TO_AMOS")({"label": src})["label"]  # as a bundle config writes it
    np.testing.assert_array_equal(by_name, expected)
    with pytest.raises(ValueError, match="unknown label mapping"):
        RemapLabelsd("label", "TS_TO_NOTHING")


# ---------------------------------------------------------------------------------------------------- AAA
def _aaa_case(root: Path, case_id: str, names: dict[str, str | None], affine=RAS, lumen=True, shift=0) -> None:
    rng = np.random.default_rng(sum(map(ord, case_id)))
    aorta = _ball()
    ct = rng.normal(40, 10, aorta.shape).astype(np.float32)
    for role, name in names.items():
        if name is None or (role == "lumen" and not lumen):
            continue
        data = {
            "ncct": ct,
            "cect": ct + 250 * aorta,
            "aorta": aorta,
            "lumen": _ball(radius=2.0),
            "cect_aorta": np.roll(aorta, shift, axis=0),
        }[role]
        _save(root / case_id / name, data, affine)


AAA_NAMES = {"ncct": "ncct.nii.gz", "cect": "cect.nii.gz", "aorta": "aorta.nii.gz", "lumen": "lumen.nii.gz"}


def test_prepare_aaa_split_by_patient_unlabeled_and_missing(tmp_path, capsys):
    root = tmp_path / "aaa"
    cases = ["P01_a", "P01_b", "P02_a", "P03_a", "P04_a", "P05_a", "P05_b", "P06_a"]
    for i, case in enumerate(cases):
        _aaa_case(root, case, AAA_NAMES, affine=RAS if i % 2 else LPS, lumen=i % 3 != 0)
    # a case with data-set style names: the aorta file also matches the NCCT pattern
    _aaa_case(root, "P07_a", {"ncct": "P07_ncct.nii.gz", "cect": "P07_cect.nii.gz", "aorta": "P07_ncct_aorta.nii.gz"})
    _aaa_case(root, "P08_a", {"ncct": "ncct.nii.gz", "aorta": "aorta.nii.gz"})  # CECT missing: dropped
    out = tmp_path / "lists" / "aaa.json"
    prepare_aaa(str(root), str(out), val_fraction=0.2, test_fraction=0.2, seed=1, patient_regex=r"^(P\d+)_")

    content = _load_split(out)
    entries = [e for s in ("training", "validation", "test") for e in content[s]]
    assert sorted(e["case_id"] for e in entries) == sorted(cases + ["P07_a"])
    _assert_patient_split(content, r"^(P\d+)_")
    assert all(content[s] for s in ("training", "validation", "test"))
    for e in entries:
        labeled = cases.index(e["case_id"]) % 3 != 0 if e["case_id"] in cases else False
        assert set(e) == {"case_id", "ncct", "cect", "aorta"} | ({"lumen"} if labeled else set())
        for key in set(e) - {"case_id"}:
            path = _resolve(out, e[key])
            assert path.parent.name == e["case_id"] and key in path.name
    from tools.data.datalist import load_datalist  # the loader every bundle uses (imports MONAI)

    loaded = load_datalist(out, "training", required_keys=("case_id", "ncct", "cect", "aorta"))
    assert [e["case_id"] for e in loaded] == [e["case_id"] for e in content["training"]]
    assert all(Path(e["ncct"]).is_absolute() and Path(e["ncct"]).is_file() for e in loaded)
    p07 = next(e for e in entries if e["case_id"] == "P07_a")
    assert p07["ncct"].endswith("P07_ncct.nii.gz") and p07["aorta"].endswith("P07_ncct_aorta.nii.gz")

    report = json.loads((tmp_path / "lists" / "aaa_report.json").read_text())
    assert [d["case_id"] for d in report["dropped"]] == ["P08_a"] and "cect missing" in report["dropped"][0]["reason"]
    assert report["counts"]["unlabeled"] == 4 and report["counts"]["kept"] == 9
    printed = capsys.readouterr().out
    assert "P08_a" in printed and "dropped" in printed and "unlabeled" in printed


def test_prepare_aaa_dice_qc_drops_misregistered_real_aorta(tmp_path, capsys, realdata):
    src = realdata / "ts_aorta_cta"
    aorta_img = nib.load(str(src / "aorta.nii.gz"))
    aorta = np.asarray(aorta_img.dataobj)
    shifted = np.roll(aorta, 12, axis=0)
    root = tmp_path / "pairs"
    for case, cect_aorta in (("good", aorta), ("shifted", shifted)):
        (root / case).mkdir(parents=True)
        for name in ("ncct.nii.gz", "cect.nii.gz"):  # the real CTA stands in for both phases (header checks only)
            os.symlink(src / "ct_cropped.nii.gz", root / case / name)
        os.symlink(src / "aorta.nii.gz", root / case / "aorta.nii.gz")
        nib.save(
            nib.Nifti1Image(cect_aorta, aorta_img.affine, aorta_img.header), str(root / case / "cect_aorta.nii.gz")
        )
    out = tmp_path / "datalist.json"
    prepare_aaa(
        str(root), str(out), cect_aorta_pattern="cect_aorta.nii.gz", min_dice=0.8, val_fraction=0, test_fraction=0
    )

    content = _load_split(out)
    assert [e["case_id"] for e in content["training"]] == ["good"] and not content["validation"] and not content["test"]
    assert "lumen" not in content["training"][0]
    assert _resolve(out, content["training"][0]["cect"]) == (src / "ct_cropped.nii.gz").resolve()
    assert content["training"][0]["cect"] == "pairs/good/cect.nii.gz"  # symlinks are referenced, not resolved
    report = json.loads((tmp_path / "datalist_report.json").read_text())
    expected = mask_dice(aorta, shifted)
    assert 0 < expected < 0.8
    (dropped,) = report["dropped"]
    assert dropped["case_id"] == "shifted" and "Dice" in dropped["reason"]
    assert dropped["dice"] == pytest.approx(expected, abs=1e-4)
    assert next(c for c in report["cases"] if c["case_id"] == "good")["dice"] == 1.0
    assert "shifted" in capsys.readouterr().out


def test_find_case_files_disambiguates_by_elimination(tmp_path):
    case = tmp_path / "c"
    for name in ("c_ncct.nii.gz", "c_ncct_aorta.nii.gz", "c_cect.nii.gz", "c_cect_aorta.nii.gz", "notes.txt"):
        _save(case / name, np.zeros((2, 2, 2), np.uint8)) if name.endswith(".gz") else (case / name).write_text("x")
    patterns = {"ncct": "*ncct*.nii.gz", "cect": "*cect*.nii.gz", "aorta": "*aorta*.nii.gz", "lumen": "*lumen*.nii.gz"}
    found, problems = find_case_files(case, {**patterns, "cect_aorta": "*cect_aorta*"})
    assert {k: v.name for k, v in found.items()} == {
        "ncct": "c_ncct.nii.gz",
        "cect": "c_cect.nii.gz",
        "aorta": "c_ncct_aorta.nii.gz",
        "cect_aorta": "c_cect_aorta.nii.gz",
    }
    assert problems == {"lumen": "missing (no file matches '*lumen*.nii.gz')"}
    found, problems = find_case_files(case, patterns)  # which aorta is which is unknown without --cect_aorta_pattern
    assert found == {} and problems["aorta"].startswith("ambiguous: c_cect_aorta.nii.gz, c_ncct_aorta.nii.gz")


def test_prepare_aaa_refuses_overwrite(tmp_path):
    root = tmp_path / "aaa"
    for case in ("c1", "c2", "c3"):
        _aaa_case(root, case, AAA_NAMES)
    out = tmp_path / "datalist.json"
    prepare_aaa(str(root), str(out), val_fraction=0.34, test_fraction=0)
    before = (out.read_bytes(), out.stat().st_mtime_ns, (tmp_path / "datalist_report.json").stat().st_mtime_ns)
    with pytest.raises(FileExistsError, match="datalist.json.*--overwrite"):
        prepare_aaa(str(root), str(out), val_fraction=0.34, test_fraction=0, seed=5)
    assert (out.read_bytes(), out.stat().st_mtime_ns, (tmp_path / "datalist_report.json").stat().st_mtime_ns) == before
    prepare_aaa(str(root), str(out), val_fraction=0.34, test_fraction=0, seed=5, overwrite=True)
    assert out.stat().st_mtime_ns >= before[1]


def test_prepare_aaa_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_aaa(str(tmp_path / "nowhere"), str(tmp_path / "d.json"))
    root = tmp_path / "aaa"
    _aaa_case(root, "c1", {**AAA_NAMES, "cect_aorta": "cect_aorta.nii.gz"})
    with pytest.raises(ValueError, match="min_dice"):
        prepare_aaa(str(root), str(tmp_path / "d.json"), min_dice=1.5)
    # CECT-aorta on another grid: a clear error naming both files, nothing written
    _save(root / "c1" / "cect_aorta.nii.gz", _ball(), LPS)
    with pytest.raises(ValueError, match=r"(?s)aorta\.nii\.gz.*cect_aorta\.nii\.gz.*different affines"):
        prepare_aaa(
            str(root), str(tmp_path / "d.json"), cect_aorta_pattern="cect_aorta.nii.gz", val_fraction=0, test_fraction=0
        )
    assert not (tmp_path / "d.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no case folders"):
        prepare_aaa(str(tmp_path / "empty"), str(tmp_path / "d.json"))


# --------------------------------------------------------------------------------------------------- AMOS
def _amos_pair(
    root: Path, part: str, idx: int, label: np.ndarray | None = None, image=True, lab=True, affine=LPS
) -> None:
    label = _ball().astype(np.uint8) * (idx % 15 + 1) if label is None else label
    if image:
        _save(root / f"images{part}" / f"amos_{idx:04d}.nii.gz", label.astype(np.int16) * 30 - 1000, affine)
    if lab:
        _save(root / f"labels{part}" / f"amos_{idx:04d}.nii.gz", label, affine)


def test_prepare_amos_ct_only_split_and_test_from_va(tmp_path, capsys):
    root = tmp_path / "amos22"
    for i in range(1, 9):
        _amos_pair(root, "Tr", i)
    _amos_pair(root, "Tr", 9, lab=False)  # image without label: dropped
    _amos_pair(root, "Tr", 510)  # MRI
    for i in (101, 102, 103, 104):
        _amos_pair(root, "Va", i)
    _amos_pair(root, "Va", 550)  # MRI
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "spleen", "8": "arota"},
                "training": [{"image": "./imagesTr/amos_0001.nii.gz"}, {"image": "./imagesTr/amos_0400.nii.gz"}],
            }
        )
    )
    out = tmp_path / "amos.json"
    prepare_amos(str(root), str(out), val_fraction=0.25, num_test=2, seed=0)

    content = _load_split(out)
    ids = {s: [e["case_id"] for e in content[s]] for s in ("training", "validation", "test")}
    assert len(ids["training"]) == 6 and len(ids["validation"]) == 2 and len(ids["test"]) == 2
    assert set(ids["training"] + ids["validation"]) == {f"amos_{i:04d}" for i in range(1, 9)}
    assert set(ids["test"]) <= {"amos_0101", "amos_0102", "amos_0103", "amos_0104"}
    _assert_patient_split(content)
    for split in ids:
        for e in content[split]:
            assert set(e) == {"case_id", "image", "label"}
            part = "Va" if split == "test" else "Tr"
            assert _resolve(out, e["image"]) == (root / f"images{part}" / f"{e['case_id']}.nii.gz").resolve()
            assert _resolve(out, e["label"]) == (root / f"labels{part}" / f"{e['case_id']}.nii.gz").resolve()
    assert content["labels"]["15"] == "prostate/uterus"
    report = json.loads((tmp_path / "amos_report.json").read_text())
    assert report["counts"]["skipped_mri"] == 2 and report["skipped_mri_cases"] == ["amos_0510", "amos_0550"]
    assert report["dropped"] == [{"case_id": "amos_0009", "part": "Tr", "reason": "no label in labelsTr"}]
    assert report["counts"]["unused_Va"] == 2
    assert any("arota" in d for d in report["dataset_json"]["label_differences"])
    assert report["dataset_json"]["listed_but_missing"] == ["./imagesTr/amos_0400.nii.gz"]
    assert all(c["unexpected_ids"] == [] for c in report["cases"])
    assert "MRI cases skipped: 2" in capsys.readouterr().out


def test_prepare_amos_remaps_real_totalsegmentator_map(tmp_path, realdata):
    seg_src = realdata / "ts_abdomen_ncct" / "example_seg.nii.gz"
    root = tmp_path / "amos_ts"
    for part in ("imagesTr", "labelsTr"):
        (root / part).mkdir(parents=True)
    os.symlink(realdata / "ts_abdomen_ncct" / "example_ct_sm.nii.gz", root / "imagesTr" / "amos_0001.nii.gz")
    os.symlink(seg_src, root / "labelsTr" / "amos_0001.nii.gz")
    synthetic = np.zeros((12, 12, 6), np.uint8)
    synthetic.flat[:20] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 19, 21, 22, 52, 63, 10, 18, 64, 117]
    _amos_pair(root, "Tr", 2, label=synthetic, affine=RAS)
    out = tmp_path / "prepared" / "datalist.json"
    prepare_amos(str(root), str(out), val_fraction=0.5, remap_from="totalseg", num_test=None)

    content = _load_split(out)
    entries = {e["case_id"]: e for s in ("training", "validation") for e in content[s]}
    lut = np.zeros(256, np.int64)
    for src, dst in TOTALSEG_V2_TO_AMOS.items():
        lut[src] = dst
    for case_id, source in (("amos_0001", seg_src), ("amos_0002", root / "labelsTr" / "amos_0002.nii.gz")):
        written = _resolve(out, entries[case_id]["label"])
        assert written.parent == (tmp_path / "prepared" / "labels_amos").resolve()
        src_img, new_img = nib.load(str(source)), nib.load(str(written))
        src_ids = np.asarray(src_img.dataobj)
        new_ids = np.asarray(new_img.dataobj)
        assert new_img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(new_ids, lut[src_ids])
        np.testing.assert_allclose(new_img.affine, src_img.affine, atol=1e-5)
        assert new_img.header.get_zooms() == pytest.approx(src_img.header.get_zooms())
    real_ids = set(np.unique(np.asarray(nib.load(str(_resolve(out, entries["amos_0001"]["label"]))).dataobj)))
    assert {1, 2, 3, 6, 7, 8, 9, 10, 13} <= real_ids <= set(range(16))  # liver 5->6, aorta 52->8, IVC 63->9 ...
    second = np.asarray(nib.load(str(_resolve(out, entries["amos_0002"]["label"]))).dataobj).flat[:20]
    np.testing.assert_array_equal(second, [0, 1, 2, 3, 4, 6, 7, 10, 11, 12, 5, 13, 14, 15, 8, 9, 0, 0, 0, 0])
    assert np.asarray(nib.load(str(seg_src)).dataobj).max() > 15  # input untouched (still TotalSegmentator ids)


def test_prepare_amos_keeps_real_amos_label_and_geometry(tmp_path, realdata):
    src = realdata / "amos_label" / "amos_0013_label.nii.gz"
    src_img = nib.load(str(src))
    root = tmp_path / "amos_va"
    (root / "labelsVa").mkdir(parents=True)
    os.symlink(src, root / "labelsVa" / "amos_0013.nii.gz")
    image = nib.Nifti1Image(np.zeros(src_img.shape, np.uint8), src_img.affine, src_img.header)  # header is all we read
    (root / "imagesVa").mkdir()
    nib.save(image, str(root / "imagesVa" / "amos_0013.nii"))
    out = tmp_path / "datalist.json"
    prepare_amos(str(root), str(out), num_test=50)

    content = _load_split(out)
    assert content["training"] == [] and content["validation"] == []
    (entry,) = content["test"]
    label_path = _resolve(out, entry["label"])
    assert label_path == src.resolve()
    loaded = nib.load(str(label_path))
    counts = np.bincount(np.asarray(loaded.dataobj).ravel())
    assert len(counts) == 16 and np.all(counts > 0)  # ids 0..15, all present, nothing else
    np.testing.assert_allclose(loaded.affine, src_img.affine)
    report = json.loads((tmp_path / "datalist_report.json").read_text())
    assert report["cases"][0]["ids"] == list(range(16)) and report["cases"][0]["unexpected_ids"] == []
    assert report["notes"] and "--num_test 50" in report["notes"][0]


def test_prepare_amos_refuses_overwrite_of_remapped_labels(tmp_path):
    root = tmp_path / "amos22"
    for i in (1, 2, 3):
        _amos_pair(root, "Tr", i)
    out = tmp_path / "datalist.json"
    existing = _save(tmp_path / "labels_amos" / "amos_0002.nii.gz", np.ones((2, 2, 2), np.uint8))
    before = existing.read_bytes()
    with pytest.raises(FileExistsError, match="amos_0002.nii.gz.*--overwrite"):
        prepare_amos(str(root), str(out), val_fraction=0.34, remap_from="totalseg")
    assert not out.exists() and existing.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "labels_amos").iterdir()) == ["amos_0002.nii.gz"]
    prepare_amos(str(root), str(out), val_fraction=0.34, remap_from="totalseg", overwrite=True)
    assert nib.load(str(existing)).shape == (12, 12, 6)
    # never write onto an input, even with --overwrite
    with pytest.raises(ValueError, match="is an input file"):
        prepare_amos(
            str(root),
            str(out),
            val_fraction=0.34,
            remap_from="totalseg",
            overwrite=True,
            label_dir=str(root / "labelsTr"),
        )


def test_prepare_amos_bad_arguments(tmp_path):
    root = tmp_path / "amos22"
    _amos_pair(root, "Tr", 520)  # MRI only
    with pytest.raises(ValueError, match="no CT case.*MRI cases skipped: 1"):
        prepare_amos(str(root), str(tmp_path / "d.json"))
    with pytest.raises(ValueError, match="num_test"):
        prepare_amos(str(root), str(tmp_path / "d.json"), num_test=-3)
    with pytest.raises(ValueError, match="remap_from"):
        prepare_amos(str(root), str(tmp_path / "d.json"), remap_from="nnunet")
    (root / "labelsTr" / "amos_0001.nii.gz").write_bytes(b"not a nifti")
    _save(root / "imagesTr" / "amos_0001.nii.gz", np.zeros((4, 4, 4), np.int16))
    _amos_pair(root, "Tr", 2)
    with pytest.raises(ValueError, match="cannot read NIfTI file.*amos_0001.nii.gz"):
        prepare_amos(str(root), str(tmp_path / "d.json"), val_fraction=0.5)
    # the CLI: one clear line on stderr, exit status 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.abdomen.prepare_data",
            "--root",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "d.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: --root" in proc.stderr and "missing" in proc.stderr


# ------------------------------------------------------------------------------------------------ cardiac
def _heart_label(shape=(16, 16, 6), values=(205, 420, 500, 550, 600, 820, 850)) -> np.ndarray:
    label = np.zeros(shape, np.int16)
    for i, v in enumerate(values):
        label[1 + 2 * i : 3 + 2 * i, 2:10, 1:5] = v
    return label


def test_prepare_cardiac_mmwhs(tmp_path, capsys):
    root = tmp_path / "mmwhs"
    labels = {}
    for i, case in enumerate(["ct_train_1001", "ct_train_1002", "ct_train_1003", "ct_train_1004"]):
        values = (205, 420, 500, 550, 600, 820) + ((850,) if i != 1 else (421,))  # 1002: no PA, a stray 421
        labels[case] = _heart_label(values=values)
        _save(root / "ct_train" / f"{case}_image.nii.gz", ((labels[case] > 0) * 300 - 800).astype(np.int16), LPS)
        _save(root / "ct_train" / f"{case}_label.nii.gz", labels[case], LPS)
    _save(root / "ct_test" / "ct_test_2001_image.nii.gz", np.zeros((16, 16, 6), np.int16), LPS)
    out = tmp_path / "heart" / "datalist.json"
    prepare_cardiac(str(root), str(out), layout="mmwhs", val_fraction=0.25, test_fraction=0.25, seed=2)

    content = _load_split(out)
    _assert_patient_split(content)
    entries = {e["case_id"]: e for s in ("training", "validation", "test") for e in content[s]}
    assert sorted(entries) == sorted(labels) and all(len(content[s]) for s in ("training", "validation", "test"))
    lut = np.zeros(1000, np.int64)
    for src, dst in MMWHS_TO_HEART.items():
        lut[src] = dst
    for case, e in entries.items():
        assert _resolve(out, e["image"]).name == f"{case}_image.nii.gz"
        written = nib.load(str(_resolve(out, e["label"])))
        assert written.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(written.dataobj), lut[labels[case]])
        np.testing.assert_allclose(written.affine, LPS)
    report = json.loads((tmp_path / "heart" / "datalist_report.json").read_text())
    case2 = next(c for c in report["cases"] if c["case_id"] == "ct_train_1002")
    assert case2["absent"] == {"PA": "value 850 not in the label map", "LAA": "no MM-WHS label value"}
    assert case2["unknown_values"] == {"421": 2 * 8 * 4}
    assert report["absent_summary"]["cases_lacking"] == {
        "LA": 0,
        "LV": 0,
        "RA": 0,
        "RV": 0,
        "MYO": 0,
        "AO": 0,
        "PA": 1,
        "LAA": 4,
    }
    assert report["dropped"][0]["case_id"] == "ct_test_2001"
    printed = capsys.readouterr().out
    assert "LAA 4/4" in printed and "PA 1/4" in printed


def test_prepare_cardiac_totalseg_and_per_structure(tmp_path):
    root = tmp_path / "ts"
    shape = (14, 14, 5)
    masks = {
        "heart_atrium_left": (slice(1, 4), 1),
        "heart_ventricle_left": (slice(4, 7), 2),
        "heart_atrium_right": (slice(7, 9), 3),
        "heart_ventricle_right": (slice(9, 11), 4),
        "heart_myocardium": (slice(11, 12), 5),
        "aorta": (slice(12, 13), 6),
        "pulmonary_artery": (slice(13, 14), 7),
        "atrial_appendage_left": (slice(2, 3), 8),  # overlaps the LA: LAA (later id) wins
        "pulmonary_vein": (slice(0, 1), None),  # not the PA: ignored
    }
    expected = {}
    for case in ["s01", "s02", "s03"]:
        label = np.zeros(shape, np.uint8)
        for name, (rows, heart_id) in masks.items():
            if (case == "s02" and name == "pulmonary_artery") or (case == "s03" and name == "atrial_appendage_left"):
                continue
            mask = np.zeros(shape, np.uint8)
            if not (case == "s03" and name == "aorta"):  # s03: an empty aorta mask
                mask[rows, 3:11, 1:4] = 1
            _save(root / case / "segmentations" / f"{name}.nii.gz", mask, RAS)
            if heart_id and mask.any():
                label[mask > 0] = heart_id
        expected[case] = label
        _save(root / case / "ct.nii.gz", np.full(shape, -900, np.int16), RAS)
    out = tmp_path / "datalist.json"
    prepare_cardiac(str(root), str(out), layout="totalseg", val_fraction=0.34, test_fraction=0)

    content = _load_split(out)
    entries = {e["case_id"]: e for s in ("training", "validation") for e in content[s]}
    for case, label in expected.items():
        written = nib.load(str(_resolve(out, entries[case]["label"])))
        np.testing.assert_array_equal(np.asarray(written.dataobj), label)
        np.testing.assert_allclose(written.affine, RAS)
    report = json.loads((tmp_path / "datalist_report.json").read_text())
    absent = {c["case_id"]: c["absent"] for c in report["cases"]}
    assert absent["s01"] == {}
    assert absent["s02"] == {"PA": "no file 'pulmonary_artery.nii.gz'"}
    assert absent["s03"] == {"AO": "empty mask 'aorta.nii.gz'", "LAA": "no file 'atrial_appendage_left.nii.gz'"}
    assert next(c for c in report["cases"] if c["case_id"] == "s01")["overlap_voxels"] == 8 * 3

    # TotalSegmentator multi-label (heartchambers_highres --ml) output: ids 1 MYO, 2 LA, 3 LV, 4 RA, 5 RV, 6 AO, 7 PA
    ml = tmp_path / "ts_ml"
    source = np.zeros(shape, np.uint8)
    source[0, 0, :] = np.arange(1, 6)
    source[1, 0, :3] = [6, 7, 9]  # 9: not a heartchambers_highres id -> reported, set to 0
    _save(ml / "h1" / "ct.nii.gz", np.zeros(shape, np.int16), LPS)
    _save(ml / "h1" / "heartchambers_highres.nii.gz", source, LPS)
    _save(ml / "h2" / "ct.nii.gz", np.zeros(shape, np.int16), LPS)  # no label: dropped
    prepare_cardiac(str(ml), str(tmp_path / "ml.json"), layout="totalseg_ml", val_fraction=0, test_fraction=0)
    (entry,) = _load_split(tmp_path / "ml.json")["training"]
    merged = np.asarray(nib.load(str(_resolve(tmp_path / "ml.json", entry["label"]))).dataobj)
    np.testing.assert_array_equal(merged[0, 0, :], [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(merged[1, 0, :3], [6, 7, 0])
    assert merged.sum() == 5 + 1 + 2 + 3 + 4 + 6 + 7
    report = json.loads((tmp_path / "ml_report.json").read_text())
    assert report["cases"][0]["absent"] == {"LAA": "no heartchambers_highres label value"}
    assert report["cases"][0]["unknown_values"] == {"9": 1} and report["dropped"][0]["case_id"] == "h2"

    # per-structure layout with configured names and an image name
    ps = tmp_path / "ps" / "case_a"
    _save(ps / "img.nii.gz", np.zeros(shape, np.int16), LPS)
    for name, fname in (("LV", "lv.nii.gz"), ("MYO", "myo.nii.gz")):
        mask = np.zeros(shape, np.uint8)
        mask[(2 if name == "LV" else 5) : (4 if name == "LV" else 7), 2:5, 1:3] = 1
        _save(ps / "masks" / fname, mask, LPS)
    _save(tmp_path / "ps" / "case_b" / "img.nii.gz", np.zeros(shape, np.int16), LPS)
    out2 = tmp_path / "ps.json"
    prepare_cardiac(
        str(tmp_path / "ps"),
        str(out2),
        layout="per_structure",
        image_name="img.nii.gz",
        mask_dir="masks",
        structure_files={"LV": "lv.nii.gz", "MYO": "myo.nii.gz"},
        val_fraction=0,
        test_fraction=0,
    )
    entries = {e["case_id"]: e for s in ("training", "validation") for e in _load_split(out2)[s]}
    merged = np.asarray(nib.load(str(_resolve(out2, entries["case_a"]["label"]))).dataobj)
    assert set(np.unique(merged)) == {0, 2, 5} and np.count_nonzero(merged == 2) == 12
    report = json.loads((tmp_path / "ps_report.json").read_text())
    assert report["absent_summary"]["cases_lacking"] == {
        "LA": 1,
        "LV": 0,
        "RA": 1,
        "RV": 1,
        "MYO": 0,
        "AO": 1,
        "PA": 1,
        "LAA": 1,
    }
    assert report["dropped"][0]["case_id"] == "case_b" and "no heart structure" in report["dropped"][0]["reason"]
    assert "case_b" not in entries and not (tmp_path / "labels_heart" / "case_b.nii.gz").exists()


def test_prepare_cardiac_refuses_overwrite(tmp_path):
    root = tmp_path / "mmwhs"
    for case in ("ct_train_1001", "ct_train_1002"):
        _save(root / f"{case}_image.nii.gz", np.zeros((16, 16, 6), np.int16))
        _save(root / f"{case}_label.nii.gz", _heart_label())
    out = tmp_path / "datalist.json"
    prepare_cardiac(str(root), str(out), val_fraction=0.5, test_fraction=0)
    label = tmp_path / "labels_heart" / "ct_train_1001.nii.gz"
    before = (out.read_bytes(), label.read_bytes(), label.stat().st_mtime_ns)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_cardiac(str(root), str(out), val_fraction=0.5, test_fraction=0, seed=9)
    assert (out.read_bytes(), label.read_bytes(), label.stat().st_mtime_ns) == before


def test_prepare_cardiac_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--layout must be one of mmwhs, totalseg_ml, per_structure, totalseg"):
        prepare_cardiac(str(tmp_path), str(tmp_path / "d.json"), layout="acdc")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        prepare_cardiac(str(tmp_path / "nothing_here"), str(tmp_path / "d.json"))
    root = tmp_path / "ps"
    _save(root / "c1" / "image.nii.gz", np.zeros((8, 8, 4), np.int16), RAS)
    _save(root / "c1" / "LV.nii.gz", np.ones((8, 8, 4), np.uint8), LPS)  # not on the image grid
    with pytest.raises(ValueError, match="structure_files: unknown structure"):
        prepare_cardiac(
            str(root), str(tmp_path / "d.json"), layout="per_structure", structure_files={"LVOT": "x.nii.gz"}
        )
    with pytest.raises(ValueError, match=r"(?s)image\.nii\.gz.*LV\.nii\.gz.*different affines"):
        prepare_cardiac(str(root), str(tmp_path / "d.json"), layout="per_structure", val_fraction=0, test_fraction=0)
    assert not (tmp_path / "d.json").exists()
    with pytest.raises(ValueError, match="no mmwhs case found"):
        prepare_cardiac(str(root), str(tmp_path / "d.json"), layout="mmwhs")
