"""Geometry round trip: load, reorient/resample, invert, save -> the saved affine and shape equal the input's.

Runs on the real CT files in ../shared/realdata (an RAS non-contrast CT, an LPS CT angiogram, an LAS
AMOS label map, a DICOM series) and on the project's own phantoms (RAS and LPS).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    Spacingd,
)


def _round_trip(path: Path, out_dir: Path, pixdim, mode: str) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    pre = Compose(
        [
            LoadImaged("img", image_only=True),
            EnsureChannelFirstd("img"),
            Orientationd("img", axcodes="RAS"),
            Spacingd("img", pixdim=pixdim, mode=mode) if pixdim else Compose([]),
        ]
    )
    d = pre({"img": str(path)})
    assert tuple(float(a) for a in np.diag(d["img"].affine.numpy())[:3] > 0) == (1.0, 1.0, 1.0)  # RAS
    d["pred"] = d["img"].clone()  # stands in for a model output on the model's grid
    post = Compose(
        [
            Invertd("pred", transform=pre, orig_keys="img", nearest_interp=(mode == "nearest")),
            SaveImaged("pred", output_dir=str(out_dir), output_postfix="rt", separate_folder=False,
                       output_dtype=np.float32, resample=False),
        ]
    )
    post(d)
    name = path.name.replace(".nii.gz", "") if path.is_file() else path.name
    out = nib.load(str(out_dir / f"{name}_rt.nii.gz"))
    return nib.load(str(path)) if path.is_file() else None, out


@pytest.mark.parametrize(
    "rel, pixdim, mode",
    [
        ("ts_abdomen_ncct/example_ct_sm.nii.gz", None, "bilinear"),  # RAS, int16 HU
        ("ts_aorta_cta/ct_cropped.nii.gz", None, "bilinear"),  # LPS CTA
        ("ts_aorta_cta/aorta.nii.gz", (2.0, 2.0, 2.0), "nearest"),  # LPS label, resampled and back
        ("amos_label/amos_0013_label.nii.gz", (1.5, 1.5, 5.0), "nearest"),  # LAS label map
    ],
)
def test_real_nifti_round_trip_keeps_affine(realdata, tmp_path, rel, pixdim, mode):
    src, out = _round_trip(realdata / rel, tmp_path, pixdim, mode)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert out.shape == src.shape
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    a, b = np.asarray(src.dataobj), np.asarray(out.dataobj)
    if pixdim is None:
        np.testing.assert_array_equal(b, a)  # pure reorientation is lossless
    else:  # nearest resampling there and back: labels mostly unchanged, ids kept
        assert set(np.unique(b)) <= set(np.unique(a))
        fg_a, fg_b = a > 0, b > 0
        dice = 2 * (fg_a & fg_b).sum() / (fg_a.sum() + fg_b.sum())
        assert dice > 0.9


def test_dicom_series_geometry_matches_its_label_map(realdata, tmp_path):
    folder = realdata / "ts_abdomen_cect_dicom"
    load = Compose(
        [
            LoadImaged(["img", "seg"], image_only=True),
            EnsureChannelFirstd(["img", "seg"]),
            Orientationd(["img", "seg"], axcodes="RAS"),
        ]
    )
    d = load({"img": str(folder / "example_ct_dicom"), "seg": str(folder / "example_seg_dicom.nii.gz")})
    assert d["img"].shape == d["seg"].shape == (1, 512, 512, 20)
    # the label map's y axis is flipped against the DICOM pixel order; through the affines they agree
    np.testing.assert_allclose(d["img"].affine.numpy(), d["seg"].affine.numpy(), atol=1e-3)
    img, seg = d["img"][0].numpy(), d["seg"][0].numpy()
    assert 80 < np.median(img[seg == 5]) < 110  # liver, contrast enhanced (PROVENANCE: ~93 HU)
    assert 130 < np.median(img[seg == 52]) < 170  # aorta (~151 HU)
    # written out as NIfTI, the series keeps its world geometry
    SaveImaged("img", output_dir=str(tmp_path), output_postfix="ct", separate_folder=False, resample=False)(d)
    saved = nib.load(str(next(tmp_path.glob("*_ct.nii.gz"))))
    np.testing.assert_allclose(saved.affine, d["img"].affine.numpy(), atol=1e-3)


@pytest.mark.parametrize("anatomy", ["aaa", "abdomen", "heart"])
def test_phantom_round_trip_keeps_affine(tmp_path, anatomy):
    phantoms = pytest.importorskip("tools.data.phantoms")
    datalist = phantoms.generate(anatomy, cases=2, out=tmp_path / "data", seed=3, size=48, slices=12)
    from tools.data.datalist import load_datalist

    entries = load_datalist(datalist, "training") + load_datalist(datalist, "validation")
    key = "ncct" if anatomy == "aaa" else "image"
    for e in entries:
        src, out = _round_trip(Path(e[key]), tmp_path / "out", (1.0, 1.0, 2.0), "bilinear")
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
        assert out.shape == src.shape
