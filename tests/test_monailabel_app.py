"""MONAI Label glue that runs without MONAI Label: the optional study mask (NCCT-only AortaDiff) and the extra
weights a served model reads (AortaDiff's aorta segmenter linked to the trainable segmenter model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tools.monailabel_app.make_app import add_extra_weights
from tools.monailabel_app.transforms import StudyMaskd

REPO = Path(__file__).resolve().parents[1]
AORTA_CONFIGS = REPO / "bundles" / "aortadiff_cect" / "configs"


def test_study_mask_optional_and_loaded(tmp_path):
    study = tmp_path / "aaa_001_ncct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.eye(4)), str(study))
    d = {"image": str(study)}
    assert StudyMaskd(required=False, load=True)(d) == d  # NCCT only: no key, the bundle segments the aorta
    with pytest.raises(FileNotFoundError, match="labels/aorta/aaa_001_ncct.nii.gz"):
        StudyMaskd()(d)
    mask = np.zeros((6, 5, 4), np.uint8)
    mask[2:4, 1:3, :] = 1
    (tmp_path / "labels" / "aorta").mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "labels" / "aorta" / study.name))
    assert StudyMaskd()(d)["aorta"] == str(tmp_path / "labels" / "aorta" / study.name)
    loaded = StudyMaskd(required=False, load=True)(d)["aorta"]
    assert isinstance(loaded, torch.Tensor) and np.array_equal(np.asarray(loaded), mask)


def test_extra_weights_link_to_the_trained_model_or_are_tiny(tmp_path):
    spec = {"bundle": "aortadiff_cect",
            "extra_weights": {"aorta_seg.pt": {"network": "aorta_seg_def", "weights": "models/aorta_seg.pt",
                                               "from_model": "aortadiff_aorta_seg"}}}
    app = tmp_path / "app" / "model"
    folder = app / "aortadiff_cect"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    cfg = json.loads((AORTA_CONFIGS / "inference.json").read_text())
    cfg.update({"aorta_seg_channels": [8, 16], "aorta_seg_strides": [2]})
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    trained = app / "aortadiff_aorta_seg" / "models" / "model.pt"
    trained.parent.mkdir(parents=True)
    trained.write_bytes(b"weights trained in MONAI Label")
    made = add_extra_weights(folder, spec, ["aortadiff_aorta_seg", "aortadiff_cect"], "tiny", REPO / "bundles")
    assert made["aorta_seg.pt"].is_symlink() and made["aorta_seg.pt"].resolve() == trained.resolve()
    shutil.rmtree(trained.parent.parent)
    made = add_extra_weights(folder, spec, ["aortadiff_cect"], "tiny", REPO / "bundles")
    assert not made["aorta_seg.pt"].is_symlink()
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    net = parser.get_parsed_content("aorta_seg_def")
    net.load_state_dict(torch.load(made["aorta_seg.pt"], weights_only=True))  # exactly the segmenter's variables
