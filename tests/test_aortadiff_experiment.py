"""AortaDiff's comparison: every baseline and ablation through training, inference and evaluate (``--quick``),
resume, the ablation switches, the harder held-out phantoms and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tools.aortadiff import experiment
from tools.aortadiff.decode import DecodeSegLabeld
from tools.aortadiff.transforms import AortaROId, SignedDistanced, binary_encode
from tools.data.phantoms import make_case
from tools.data.phantoms_aaa import write_heldout

CONFIGS = Path(experiment.CONFIGS)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``--quick`` once for the module (all rows, seed 0), then a second call that must resume."""
    work = tmp_path_factory.mktemp("aortadiff_experiment")
    argv = ["--quick", "--work_dir", str(work), "--results_dir", str(work / "out"), "--results_md", str(work / "r.md")]
    assert experiment.main(argv) == 0
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("models/*/train_record.json")}
    stamps.update({p: p.stat().st_mtime_ns for p in work.glob("results/*.json")})
    (work / "r.md").write_text("# Results\n\n<!-- begin other -->\nkept\n<!-- end other -->\n")
    assert experiment.main(argv) == 0
    return work, stamps


def test_every_row_is_trained_evaluated_and_reported(quick):
    work, _ = quick
    payload = json.loads((work / "out" / "aortadiff.json").read_text())
    runs = {r["row"]: r for r in payload["runs"]}
    assert set(runs) == set(experiment.ROWS)
    assert len({r["iterations"] for r in runs.values()}) == 1  # equal training for every model
    for name, rec in runs.items():
        model = experiment.MODELS[experiment.ROWS[name].model]
        assert rec["seed"] == 0 and rec["wall_time_s"]["evaluate"] > 0 and rec["machine"]["cores"] >= 1
        assert len(rec["per_case"]) == 3  # the held-out cases, one per kind
        assert {c["kind"] for c in rec["per_case"]} == {"regular", "thin_thrombus", "low_contrast"}
        m = rec["metrics"]
        assert (m["psnr"] is not None) == model.makes_image  # the U-Net makes no image, the CDM no lumen
        assert (m["dice_lumen"] is not None) == model.makes_segmentation
        if model.makes_segmentation:
            assert 0.0 <= m["dice_lumen"] <= 1.0 and m["diam_max_mae_mm"] >= 0.0
    assert runs["aortadiff_repaint"]["overrides"]["sampler"] == "repaint"
    assert runs["aortadiff"]["overrides"]["sampler"] == "ddim"
    assert runs["aortadiff_mean3"]["uncertainty"]["n_cases_with_score"] == 3  # the N-sample row scores uncertainty
    assert runs["aortadiff"]["uncertainty"]["n_cases_with_score"] == 0  # one sample by default
    md = (work / "r.md").read_text()
    assert "<!-- begin other -->\nkept" in md and "<!-- begin aortadiff -->" in md
    assert "segmentation-only U-Net" in md and "[25.61]" in md and "**" in md
    assert (work / "out" / "aortadiff_samples.png").stat().st_size > 10_000


def test_rerun_skips_finished_runs(quick):
    _, stamps = quick
    assert len(stamps) == len(experiment.MODELS) + len(experiment.ROWS)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_aorta_restriction_fuses_and_its_ablation_generates_the_whole_slice(quick):
    work, _ = quick
    test = json.loads((work / "data" / "datalist.json").read_text())["test"]
    e = test[0]
    ncct = np.asarray(nib.load(e["ncct"]).dataobj)
    aorta = np.asarray(nib.load(e["aorta"]).dataobj) > 0
    far = ~AortaROId("a", margin=6)({"a": aorta[None].astype(np.float32)})["roi"][0].astype(bool)
    far &= aorta.any((0, 1))[None, None, :]
    case = Path(e["case_id"]).name
    fused = np.asarray(nib.load(work / "eval" / "aortadiff_s0" / "predictions" / case / "synthetic_cect.nii.gz").dataobj)
    whole = np.asarray(nib.load(work / "eval" / "no_aorta_restriction_s0" / "predictions" / case /
                                "synthetic_cect.nii.gz").dataobj)
    assert np.array_equal(fused[far], ncct[far])  # outside the ROI: the NCCT exactly
    assert np.abs(whole[far] - ncct[far]).mean() > 1.0  # no fusion: generated everywhere


def test_ablation_switches_are_top_level_keys(quick):
    work, _ = quick

    def parsed(*deltas):
        p = ConfigParser()
        p.read_config([str(CONFIGS / "train.json"), *[str(CONFIGS / d) for d in deltas]])
        p["datalist"] = str(work / "data" / "datalist.json")
        return p

    base = parsed()
    assert base["image_mse_weight"] == 0.0 and base["lpips_weight"] == 1.0  # the paper: LPIPS in place of MSE
    assert parsed("ablation_mse_lpips.json")["image_mse_weight"] == 1.0
    assert parsed("ablation_fixed_weights.json")["kendall"] is False
    assert parsed("ablation_binary_mask.json")["mask_encoding"] == "binary"
    assert parsed("ablation_no_aorta_restriction.json")["aorta_restriction"] is False
    everything = parsed().get_parsed_content("train#files")
    labeled = parsed("ablation_labeled_only.json").get_parsed_content("train#files")
    assert 0 < len(labeled) < len(everything) and all("lumen" in e for e in labeled)
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert evaluate["num_samples"] == 1


def test_mask_encodings_and_whole_slice_roi():
    lumen = np.zeros((1, 9, 9), np.uint8)
    lumen[0, 3:6, 3:6] = 1
    sdf = SignedDistanced("m", encoding="sdf")({"m": lumen})["m"]
    binary = SignedDistanced("m", encoding="binary")({"m": lumen})["m"]
    assert np.array_equal(np.asarray(binary), binary_encode(lumen)) and set(np.unique(binary)) == {-1.0, 1.0}
    assert np.array_equal(np.asarray(binary) < 0, np.asarray(sdf) < 0)  # same decoding: sign
    assert len(np.unique(np.asarray(sdf))) > 3
    with pytest.raises(ValueError, match="mask_encoding"):
        SignedDistanced("m", encoding="onehot")
    vol = np.zeros((1, 8, 8, 3), np.float32)
    vol[0, 2:4, 2:4, 1] = 1  # aorta only in slice 1
    roi = np.asarray(AortaROId("a", whole_slice=True)({"a": vol})["roi"])
    assert roi[0, ..., 1].all() and not roi[0, ..., 0].any() and not roi[0, ..., 2].any()


def test_segmentation_baseline_decodes_like_aortadiff():
    label = torch.tensor([[[0, 1, 1, 2], [1, 2, 2, 0]]], dtype=torch.float32)  # (1, 2, 4)
    aorta = torch.tensor([[[0, 1, 1, 1], [0, 1, 1, 1]]], dtype=torch.float32)
    ncct = torch.full((1, 2, 4), 40.0)
    d = DecodeSegLabeld()({"pred": label, "aorta": aorta, "ncct_hu": ncct})
    assert d["lumen"].tolist() == [[[0, 1, 1, 0], [0, 0, 0, 0]]]  # label 1 inside the aorta only
    assert d["thrombus"].tolist() == [[[0, 0, 0, 1], [0, 1, 1, 1]]]  # aorta - lumen
    assert d["pred"].tolist() == [[[0, 1, 1, 2], [0, 2, 2, 2]]]
    assert torch.equal(d["synthetic_cect"], ncct)


def test_harder_heldout_phantoms(tmp_path):
    def stats(kind):
        a = make_case("aaa", 0, 1000, 64, 12, "RAS", build_kw={"kind": kind})["arrays"]
        aorta, lumen = a["aorta"] > 0, a["lumen"] > 0
        return {"thrombus": int((aorta & ~lumen).sum()), "lumen_hu": float(a["cect"][lumen].mean()),
                "calc": int((a["ncct"][aorta] > 400).sum())}

    regular = make_case("aaa", 0, 1000, 64, 12, "RAS")["arrays"]
    same = make_case("aaa", 0, 1000, 64, 12, "RAS", build_kw={"kind": "regular"})["arrays"]
    assert all(np.array_equal(regular[k], same[k]) for k in regular)  # the default case is unchanged
    r = stats("regular")
    assert stats("thin_thrombus")["thrombus"] < 0.7 * r["thrombus"]
    assert stats("calcified_wall")["calc"] > 3 * max(1, r["calc"])
    assert stats("low_contrast")["lumen_hu"] < r["lumen_hu"] - 60
    dl = write_heldout(tmp_path, {"regular": 1, "low_contrast": 1}, size=32, slices=8)
    test = json.loads(dl.read_text())["test"]
    assert [e["kind"] for e in test] == ["regular", "low_contrast"] and all("lumen" in e for e in test)
    mtime = dl.stat().st_mtime_ns
    assert write_heldout(tmp_path, {"regular": 1, "low_contrast": 1}, size=32, slices=8).stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="kind"):
        write_heldout(tmp_path / "x", {"huge": 1})


def test_budget_gives_every_model_the_same_iterations():
    size = experiment.SIZES["cpu"]
    rows = list(experiment.ROWS)
    it45, est = experiment.plan_iterations(size, rows, 1, 45)
    it90, _ = experiment.plan_iterations(size, rows, 2, 90)
    assert it45 == it90 and it45 % 10 == 0  # two seeds at twice the budget: the same training per run
    total = est["inference_s_per_seed"] + len(experiment.MODELS) * it45 * experiment.IDLE_COST["train_s_per_iteration"]
    assert 45 * 60 - 11 * len(experiment.MODELS) * 0.3 <= total <= 45 * 60
    with pytest.raises(ValueError, match="budget_minutes"):
        experiment.plan_iterations(size, rows, 1, 1)


def test_paired_difference_and_verdict():
    recs = [{"row": row, "seed": 0, "per_case": [{"case_id": f"c{i}", "psnr": v} for i, v in enumerate(vals)]}
            for row, vals in (("a", [3.0, 4.0, 5.0]), ("b", [1.0, 1.0, 2.0]))]
    d = experiment.paired_difference(recs, "a", "b", "psnr")
    assert d["mean"] == pytest.approx(8 / 3) and d["n"] == 3
    assert d["se"] == pytest.approx(np.std([2.0, 3.0, 3.0], ddof=1) / np.sqrt(3))
    assert experiment.verdict(d, 1) == "reproduced"
    assert experiment.verdict(d, -1).startswith("not reproduced (opposite")
    assert experiment.verdict({"mean": 0.1, "se": 1.0, "n": 3}, 1).startswith("same direction")
    assert "tenth" in experiment.verdict(d, 1, paper_diff=30.0)  # clear, but 8/3 < 3: too small to count
    agg = experiment.aggregate([{**r, "label": r["row"]} for r in recs])
    assert agg["a"]["metrics"]["psnr"]["mean"] == pytest.approx(4.0) and agg["a"]["metrics"]["psnr"]["std"] == 1.0
