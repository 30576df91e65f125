"""CT transforms: windowing, body mask, slicing (shared); SDF and aorta ROI (AortaDiff); contrast boost (cardiac)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRanged

from tools.aortadiff.transforms import AortaROId, SignedDistanced, sdf_decode, sdf_encode
from tools.cardiac.augment import RandContrastBoostd
from tools.data.transforms import BodyMaskd, ExtractSliced, RandSliced, body_mask, hu_to_unit, unit_to_hu


def test_window_known_values_and_inverse():
    # W400 / L40: [-160, 240]
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0])
    unit = hu_to_unit(hu, -160, 240)
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0, 1.0])
    monai_unit = ScaleIntensityRanged("x", a_min=-160, a_max=240, b_min=0, b_max=1, clip=True)({"x": hu})["x"]
    np.testing.assert_allclose(np.asarray(monai_unit), unit, atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(unit, -160, 240), [-160, -160, 40, 240, 240])
    t = torch.tensor([0.25])
    assert torch.allclose(unit_to_hu(t, -160, 240), torch.tensor([-60.0]))


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2


def test_sdf_round_trip_and_values_on_known_shapes():
    disk = _disk((64, 64), (32, 30), 10)[None]
    sdf = sdf_encode(disk)
    assert sdf.shape == disk.shape and sdf.dtype == np.float32
    assert sdf.min() == pytest.approx(-1.0) and sdf.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(sdf_decode(sdf), disk.astype(np.uint8))
    # the centre is the deepest inside point, a far corner the farthest outside point
    assert sdf[0, 32, 30] == pytest.approx(-1.0)
    assert sdf[0, 0, 63] == pytest.approx(1.0)  # farthest corner from (32, 30)
    # a square: inside distance at the centre of a 9x9 square is 5 voxels (to the nearest outside voxel)
    sq = np.zeros((1, 21, 21), bool)
    sq[0, 6:15, 6:15] = True
    s = sdf_encode(sq)
    # voxel (6, 10) on the edge: d_in = 1 of max 5 -> -0.2
    assert s[0, 6, 10] == pytest.approx(-0.2)
    np.testing.assert_array_equal(sdf_decode(torch.from_numpy(s)).numpy(), sq.astype(np.float32))
    # empty / full channels
    assert (sdf_encode(np.zeros((1, 8, 8))) == 1).all() and (sdf_encode(np.ones((1, 8, 8))) == -1).all()


def test_signed_distanced_per_slice_on_volume():
    vol = np.zeros((1, 32, 32, 3), np.uint8)
    vol[0, 10:20, 10:20, 0] = 1
    vol[0, 5:25, 5:25, 2] = 1
    out = SignedDistanced("lumen", output_key="sdf", per_slice=True)({"lumen": torch.from_numpy(vol)})
    sdf = np.asarray(out["sdf"])
    assert sdf.shape == vol.shape
    np.testing.assert_array_equal(sdf_decode(sdf), vol)
    assert (sdf[..., 1] == 1).all()  # empty slice
    assert sdf[..., 0].min() == pytest.approx(-1) and sdf[..., 2].min() == pytest.approx(-1)


def test_body_mask_fills_holes_and_drops_table():
    img = np.full((64, 64), -1000.0)
    body = _disk((64, 64), (30, 32), 20)
    img[body] = 40.0
    img[_disk((64, 64), (30, 32), 5)] = -900.0  # bowel gas inside
    img[60:62, 5:60] = 200.0  # table, separate component
    m = body_mask(img)
    np.testing.assert_array_equal(m, body)
    out = BodyMaskd("image")({"image": torch.from_numpy(img[None, :, :, None])})
    assert out["body"].shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(np.asarray(out["body"])[0, :, :, 0], body.astype(np.uint8))


def test_contrast_boost_probability_and_threshold():
    img = torch.tensor([[0.0, 100.0, 300.0]])
    t = RandContrastBoostd("img", shift_hu=50, prob=1.0, threshold_hu=150)
    assert torch.equal(t({"img": img})["img"], torch.tensor([[0.0, 100.0, 350.0]]))
    t = RandContrastBoostd("img", shift_hu=50, prob=0.3).set_random_state(0)
    hits = sum(bool((t({"img": img})["img"] != img).any()) for _ in range(2000))
    assert 0.26 < hits / 2000 < 0.34


def _volume(depth=6):
    aff = torch.tensor([[-0.7, 0, 0, 100.0], [0, -0.8, 0, 50.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.arange(16 * 16 * depth, dtype=torch.float32).reshape(1, 16, 16, depth), affine=aff)
    mask = MetaTensor(torch.zeros(1, 16, 16, depth), affine=aff)
    mask[0, 5:9, 5:9, 2:4] = 1
    return img, mask, aff


def test_rand_slice_only_where_mask_and_keeps_ids():
    img, mask, aff = _volume()
    t = RandSliced(["img", "mask"], mask_key="mask").set_random_state(1)
    seen = set()
    for _ in range(30):
        d = t({"img": img, "mask": mask, "case_id": "aaa_007"})
        k = d["slice_index"]
        seen.add(k)
        assert d["case_id"] == "aaa_007" and d["img"].shape == (1, 16, 16)
        assert torch.equal(d["img"].as_tensor(), img.as_tensor()[..., k])
        # in-plane affine: spacing and the slice's origin in world coordinates
        assert torch.allclose(d["img"].affine[:2, :2], aff[:2, :2])
        assert torch.allclose(d["img"].affine[:2, 2], aff[:2, 3])
        assert d["img"].meta["slice_index"] == k
        assert torch.allclose(d["spacing"], torch.tensor([0.7, 0.8]))
    assert seen == {2, 3}
    with pytest.raises(ValueError, match="case aaa_009"):
        t({"img": img, "mask": mask * 0, "case_id": "aaa_009"})


def test_extract_slice_and_out_of_range():
    img, mask, _ = _volume()
    d = ExtractSliced(["img", "mask"])({"img": img, "mask": mask, "slice_index": 4, "case_id": "c"})
    assert torch.equal(d["img"].as_tensor(), img.as_tensor()[..., 4])
    with pytest.raises(IndexError, match="slice 9"):
        ExtractSliced(["img"])({"img": img, "slice_index": 9})


def test_aorta_roi_dilation_by_margin():
    aorta = np.zeros((1, 21, 21), np.uint8)
    aorta[0, 10, 10] = 1
    roi = np.asarray(AortaROId("aorta", margin=3)({"aorta": aorta})["roi"])[0]
    np.testing.assert_array_equal(roi > 0, _disk((21, 21), (10, 10), 3))
    roi0 = np.asarray(AortaROId("aorta", margin=0)({"aorta": aorta})["roi"])
    np.testing.assert_array_equal(roi0, aorta.astype(np.float32))
