"""Label maps of the abdominal semantic-synthesis bundle on real CT / real AMOS labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from tools.abdomen.labels import (
    BODY_ID,
    AddBodyClassd,
    CheckLabelIdsd,
    EnsureBodyClassd,
    approximate_body,
)
from tools.data.label_maps import TOTALSEG_V2_TO_AMOS, RemapLabelsd
from tools.data.transforms import BodyMaskd
from tools.abdomen.synthesis_inferer import check_inference_io

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "abdomen_semantic_synthesis"


def test_body_class_from_real_ct_covers_every_labelled_organ(realdata):
    ct = realdata / "ts_abdomen_ncct" / "example_ct.nii.gz"
    seg = realdata / "ts_abdomen_ncct" / "example_seg_fast_force_split.nii.gz"
    keys = ["image", "label", "ts"]
    d = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])({"image": str(ct), "label": str(seg), "ts": str(seg)})
    d = RemapLabelsd("label", TOTALSEG_V2_TO_AMOS)(d)  # TotalSegmentator -> AMOS ids
    d = BodyMaskd("image", output_key="body")(d)
    d = AddBodyClassd("label", body_key="body")(d)
    body = np.asarray(d["body"]) > 0
    ts = np.asarray(d["ts"])
    assert 0.3 < body.mean() < 0.95
    for i in np.unique(ts)[1:]:  # every TotalSegmentator structure, AMOS organ or not, lies inside the body
        assert not np.any((ts == i) & ~body), f"TotalSegmentator id {i} sticks out of the body mask"
    lab = np.asarray(d["label"])
    amos = np.asarray(RemapLabelsd("ts", TOTALSEG_V2_TO_AMOS)({"ts": d["ts"]})["ts"])
    assert set(np.unique(amos)) - {0} == set(np.unique(lab)) - {0, BODY_ID}  # organs kept
    np.testing.assert_array_equal(lab[amos > 0], amos[amos > 0])
    np.testing.assert_array_equal(lab == BODY_ID, body & (amos == 0))  # body = inside the body, no organ
    assert np.all(lab[~body] == 0)


def test_approximate_body_from_real_amos_label(realdata):
    path = realdata / "amos_label" / "amos_0013_label.nii.gz"
    d = Compose([LoadImaged("label", image_only=True), EnsureChannelFirstd("label")])({"label": str(path)})
    lab = np.asarray(d["label"])[0]
    k = int(np.argmax((lab > 0).sum(axis=(0, 1))))
    body = approximate_body(lab[..., k], spacing=(0.78, 0.78), margin_mm=25.0)
    assert np.all(body[lab[..., k] > 0])  # contains every organ
    assert body.sum() > (lab[..., k] > 0).sum() * 1.2  # and extends beyond them
    out = EnsureBodyClassd("label")({"label": d["label"][..., k : k + 1]})["label"]
    out = np.asarray(out)[0, ..., 0]
    assert set(np.unique(out)) == set(np.unique(lab[..., k])) | {BODY_ID}


def test_label_checks_name_the_file(tmp_path):
    lab = torch.tensor([[[0, 3], [40, 1]]])
    with pytest.raises(ValueError, match="bad_label.nii.gz.*0..16"):
        from monai.data import MetaTensor

        CheckLabelIdsd("label")({"label": MetaTensor(lab, meta={"filename_or_obj": "/x/bad_label.nii.gz"})})
    with pytest.raises(ValueError, match="spatial dims"):
        CheckLabelIdsd("label", ndim=4)({"label": lab})
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        check_inference_io([str(tmp_path / "missing.nii.gz")], str(tmp_path))
    with pytest.raises(ValueError, match="not a NIfTI"):
        check_inference_io([str(tmp_path / "label.png")], str(tmp_path))
    src = tmp_path / "case.nii.gz"
    src.write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "case_synthetic.nii.gz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="case_synthetic"):
        check_inference_io([str(src)], str(tmp_path / "out"))
    assert check_inference_io([str(src)], str(tmp_path / "out"), overwrite=True)[0].endswith("case_synthetic.nii.gz")


class _Oracle(torch.nn.Module):
    """Returns the eps that makes x_0 = +1 on organs (ids 1..15) and -1 on body / background."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.float())

    def forward(self, x, t, context=None):
        x_t, onehot = x[:, :1], x[:, 1:]
        x0 = 2 * onehot[:, 1:16].sum(1, keepdim=True) - 1
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)


def test_real_amos_label_through_inference_keeps_geometry(realdata, tmp_path):
    """The real AMOS label map (LAS, 0.78 x 0.78 x 5 mm) through the bundle's inference preprocessing,
    slice synthesis, inversion and writer: same shape and affine, and the synthetic organs sit where the
    labels are. A crop of the 512 x 512 x 82 map (nibabel slicer: affine updated, orientation kept) keeps it fast."""
    import nibabel as nib

    full = nib.load(realdata / "amos_label" / "amos_0013_label.nii.gz")
    src = tmp_path / "amos_0013_label.nii.gz"
    nib.save(full.slicer[96:416, 64:448, 20:60], src)
    assert nib.aff2axcodes(nib.load(src).affine) == ("L", "A", "S")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update(
        {
            "input_files": [str(src)],
            "output_dir": str(tmp_path / "out"),
            "image_size": 64,
            "sampler": "ddim",
            "num_inference_steps": 2,
            "slice_batch_size": 48,
            "device": "$torch.device('cpu')",
            "handlers": [],  # no checkpoint: the oracle network below needs no weights
        }
    )
    parser["network"] = _Oracle(parser.get_parsed_content("scheduler").alphas_cumprod)
    for expr in parser.get_parsed_content("initialize"):
        pass
    parser.get_parsed_content("evaluator").run()

    out = nib.load(tmp_path / "out" / "amos_0013_label_synthetic.nii.gz")
    ref = nib.load(src)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    hu = out.get_fdata()
    lab = np.asarray(ref.dataobj)
    assert len(np.unique(lab)) >= 10  # most of the 15 organs are in the crop
    assert hu.min() >= -160.0 - 1e-3 and hu.max() <= 240.0 + 1e-3
    organ, bright = lab > 0, hu > 40.0
    dice = 2 * (organ & bright).sum() / (organ.sum() + bright.sum())
    assert dice > 0.85, dice  # organs painted bright exactly where they are labelled (orientation kept)
    assert (tmp_path / "out" / "amos_0013_label_grid.png").is_file()
