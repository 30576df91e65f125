"""NCCT-only AortaDiff inference: the aorta segmenter (configs/train_aorta_seg.json) trained on tiny phantoms, then
``inference.json`` without an aorta mask; and a TotalSegmentator label map (``--aorta_label 52``) on the real
non-contrast scan of ../shared/realdata/ts_abdomen_ncct/."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run

from test_bad_inputs import _expect_error as expect_input_error

from tools.aortadiff.aorta_seg import AortaSliceInferer
from tools.aortadiff.transforms import AortaROId
from tools.data.phantoms import ensure_phantoms
from tools.metrics.overlap import mask_dice

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "aortadiff_cect" / "configs"
LOGGING = str(CONFIGS / "logging.conf")
REAL = REPO.parent / "shared" / "realdata" / "ts_abdomen_ncct"
CPU = {"device": "$torch.device('cpu')"}
PHANTOMS = {"phantom_cases": 8, "phantom_size": 32, "phantom_slices": 8, "image_size": 32}
SEG_TINY = {"aorta_seg_channels": [8, 16, 32], "aorta_seg_strides": [2, 2]}
DIFF_TINY = {"roi_margin": 2, "network_channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1,
             "num_head_channels": 8, "norm_num_groups": 8, "use_flash_attention": False, "amp": False}
SEG_ITERATIONS = 150


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny phantoms; the aorta segmenter trained SEG_ITERATIONS iterations and AortaDiff 1 iteration, into one
    models folder (as a bundle's models/ holds model.pt and aorta_seg.pt)."""
    root = tmp_path_factory.mktemp("ncct_only")
    data = root / "aaa"
    ensure_phantoms("aaa", data, cases=PHANTOMS["phantom_cases"], seed=0, size=PHANTOMS["phantom_size"],
                    slices=PHANTOMS["phantom_slices"])
    paths = {"dataset_dir": str(data), "ckpt_dir": str(root / "models")}
    bundle_run("training", config_file=str(CONFIGS / "train_aorta_seg.json"), logging_file=LOGGING, **CPU,
               **PHANTOMS, **SEG_TINY, **paths, output_dir=str(root / "seg_runs"), iterations=SEG_ITERATIONS,
               val_interval=SEG_ITERATIONS, batch_size=8)
    bundle_run("training", config_file=str(CONFIGS / "train.json"), logging_file=LOGGING, **CPU, **PHANTOMS,
               **DIFF_TINY, **paths, output_dir=str(root / "runs"), iterations=1, val_interval=1, batch_size=2,
               num_workers=0, lpips_weight=0, val_inference_steps=1, val_slices_per_case=1, val_batch_size=1)
    return root, paths


def _infer(paths: dict, out: Path, **kw) -> None:
    bundle_run("inference", config_file=str(CONFIGS / "inference.json"), logging_file=LOGGING, **CPU, **PHANTOMS,
               **DIFF_TINY, **SEG_TINY, dataset_dir=paths["dataset_dir"], ckpt_dir=paths["ckpt_dir"],
               output_dir=str(out), sampler="ddim", num_inference_steps=1, progress=False, **kw)


def test_segmenter_weights_are_a_plain_state_dict_of_the_inference_network(models):
    """train_aorta_seg.json and inference.json build the same network; models/aorta_seg.pt is its state dict."""
    root, paths = models
    state = torch.load(Path(paths["ckpt_dir"]) / "aorta_seg.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**SEG_TINY, **CPU})
    net = parser.get_parsed_content("aorta_seg_def")
    assert all(torch.is_tensor(v) for v in state.values()) and state.keys() == net.state_dict().keys()
    net.load_state_dict(state)


def test_ncct_only_inference_finds_the_aorta(models, tmp_path):
    """No --input_aorta: the segmenter finds the aorta, AortaDiff runs inside its ROI; the label map's aorta is the
    found one, on the NCCT's exact grid; its Dice against the phantom's aorta is reported and must be sane."""
    root, paths = models
    datalist = json.loads((Path(paths["dataset_dir"]) / "datalist.json").read_text())
    case = datalist["test"][0]
    ncct_file = Path(paths["dataset_dir"]) / case["ncct"]
    _infer(paths, tmp_path, input_ncct=str(ncct_file), preview=False)
    ref = nib.load(str(ncct_file))
    cdir = tmp_path / ncct_file.name.split(".")[0]
    for name in ("synthetic_cect", "lumen", "thrombus", "label"):
        img = nib.load(str(cdir / f"{name}.nii.gz"))
        assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine), name
    found = np.asarray(nib.load(str(cdir / "label.nii.gz")).dataobj) > 0
    truth = np.asarray(nib.load(str(Path(paths["dataset_dir"]) / case["aorta"])).dataobj) > 0
    dice = mask_dice(found, truth)
    print(f"found aorta vs phantom aorta ({case['case_id']}, {SEG_ITERATIONS} iterations at 32 px): Dice {dice:.3f}")
    assert dice > 0.3, dice  # an untrained or empty mask scores about 0.0-0.05 here
    # outside the ROI (found aorta dilated by roi_margin) the synthetic CECT is the NCCT, exactly
    syn = np.asarray(nib.load(str(cdir / "synthetic_cect.nii.gz")).dataobj)
    ncct = np.asarray(ref.dataobj, dtype=np.float32)
    roi = AortaROId("aorta", margin=DIFF_TINY["roi_margin"])({"aorta": found[None].astype(np.float32)})["roi"][0] > 0
    np.testing.assert_array_equal(syn[~roi], ncct[~roi])


def test_aorta_slice_inferer_resizes_slices_and_back():
    """(B, C, H, W, D) -> the network sees (B * D, C, image_size, image_size); logits come back on (H, W, D)."""
    seen = []

    def net(x):
        seen.append(tuple(x.shape))
        return torch.cat([x, -x], 1)

    x = torch.linspace(-1, 1, 2 * 20 * 24 * 3).reshape(2, 1, 20, 24, 3)
    out = AortaSliceInferer(16, slice_batch_size=4)(x, net)
    assert out.shape == (2, 2, 20, 24, 3)
    assert seen == [(4, 1, 16, 16), (2, 1, 16, 16)]
    np.testing.assert_allclose(out[:, 0], -out[:, 1])
    # slice k of the output comes from slice k of the input (up to the resize round trip)
    assert torch.allclose(out[0, 0, ..., 2].mean(), x[0, 0, ..., 2].mean(), atol=1e-3)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real NCCT not found at {REAL}")
def test_totalsegmentator_label_map_on_real_ncct(models, tmp_path):
    """--input_aorta <TotalSegmentator total map> --aorta_label 52 on a real non-contrast scan: every output on the
    scan's exact grid (shape, affine), the label map's aorta = class 52, the image changed only inside the ROI."""
    root, paths = models
    ncct_file, seg_file = REAL / "example_ct_sm.nii.gz", REAL / "example_seg.nii.gz"
    _infer(paths, tmp_path, input_ncct=str(ncct_file), input_aorta=str(seg_file), aorta_label=52, preview=False,
           slice_batch_size=32)
    ref = nib.load(str(ncct_file))
    seg = np.asarray(nib.load(str(seg_file)).dataobj)
    cdir = tmp_path / "example_ct_sm"
    for name in ("synthetic_cect", "lumen", "thrombus", "label"):
        img = nib.load(str(cdir / f"{name}.nii.gz"))
        assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine), name
    label = np.asarray(nib.load(str(cdir / "label.nii.gz")).dataobj)
    assert np.array_equal(label > 0, seg == 52)
    syn = np.asarray(nib.load(str(cdir / "synthetic_cect.nii.gz")).dataobj)
    ncct = np.asarray(ref.dataobj).astype(np.float32)
    roi = AortaROId("aorta", margin=DIFF_TINY["roi_margin"])({"aorta": (seg == 52)[None].astype(np.float32)})["roi"][0]
    roi = roi > 0
    np.testing.assert_array_equal(syn[~roi], ncct[~roi])
    assert roi.mean() < 0.05 and not np.array_equal(syn[roi], ncct[roi])  # the small aorta ROI was generated


# ----------------------------------------------------------------------------- bad input: one line, nothing written
def _expect_error(tmp: Path, must_name: list[str], **over) -> str:
    """The inference checks stop with a one-line bundle input error naming ``must_name``; no file changes."""
    over = {**CPU, **PHANTOMS, **DIFF_TINY, **SEG_TINY, "sampler": "ddim", "num_inference_steps": 1,
            "progress": False, **over}
    return expect_input_error(tmp, [CONFIGS / "inference.json"], "inference", over, must_name)


@pytest.fixture
def work(models, tmp_path):
    """A work folder: the tiny AortaDiff weights, an output folder with an earlier result, a test NCCT + aorta."""
    root, paths = models
    datalist = json.loads((Path(paths["dataset_dir"]) / "datalist.json").read_text())
    case = datalist["test"][0]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes((Path(paths["ckpt_dir"]) / "model.pt").read_bytes())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier_run_notes.txt").write_text("results of an earlier run\n")
    ncct = Path(paths["dataset_dir"]) / case["ncct"]
    aorta = Path(paths["dataset_dir"]) / case["aorta"]
    return tmp_path, {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"),
                      "input_ncct": str(ncct), "dataset_dir": paths["dataset_dir"]}, aorta


def test_label_map_without_the_requested_label(work):
    tmp, over, aorta = work
    _expect_error(tmp, [str(aorta), "--aorta_label 52", "ids present: [1]"], **over, input_aorta=str(aorta), aorta_label=52)


def test_multi_label_map_given_as_a_mask(work):
    tmp, over, aorta = work
    img = nib.load(str(aorta))
    labels = np.asarray(img.dataobj).astype(np.uint8)
    labels[0, 0, :] = 5  # another organ's id beside the aorta's 1
    path = tmp / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), str(path))
    _expect_error(tmp, [str(path), "2 different labels [1, 5]", "--aorta_label ID"], **over, input_aorta=str(path))


def test_segmenter_that_finds_no_aorta(work):
    """Weights that predict background everywhere (all zero): the NCCT-only run stops before writing anything."""
    tmp, over, _ = work
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**SEG_TINY, **CPU})
    net = parser.get_parsed_content("aorta_seg_def")
    torch.save({k: torch.zeros_like(v) for k, v in net.state_dict().items()}, tmp / "models" / "aorta_seg.pt")
    _expect_error(tmp, ["aorta segmenter", str(tmp / "models" / "aorta_seg.pt"), "found no aorta", over["input_ncct"],
                        "--input_aorta"], **over)


def test_ncct_only_without_segmenter_weights(work):
    tmp, over, _ = work
    _expect_error(tmp, [str(tmp / "models" / "aorta_seg.pt"), "do not exist", "--input_aorta", "train_aorta_seg.json"],
                  **over)
