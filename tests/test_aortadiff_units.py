"""AortaDiff building blocks: two-head network, losses, RePaint, clinical metrics (CPU, tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from tools.diffusion.schedule import eps_from_x0, training_target, x0_from_output
from tools.aortadiff.inferers import AortaDDIMInferer, AortaRePaintInferer, count_denoising_calls, repaint_schedule
from tools.aortadiff.kendall import KendallUncertaintyWeighting
from tools.aortadiff.labeled_mse import labeled_mse
from tools.aortadiff.loss import TERM_NAMES, AortaDiffLoss
from tools.aortadiff.lpips_loss import ROILPIPSLoss, backbone_weights_path
from tools.aortadiff.clinical_metrics import (
    area_mm2, diameter_mae_mm, lumen_diameters_mm, mean_thrombus_area_error_percent, thrombus_area_error_percent)
from tools.aortadiff.network import TwoHeadDiffusionUNet

TINY = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("mask_head,out_c", [(True, 2), (False, 1)])
def test_two_head_shapes(mask_head, out_c):
    net = TwoHeadDiffusionUNet(mask_head=mask_head, **TINY)
    y = net(torch.randn(3, 2, 32, 32), torch.tensor([0, 10, 999]))
    assert y.shape == (3, out_c, 32, 32) and net.out_channels == out_c
    if mask_head:
        assert y[:, 1].abs().max() <= 1.0  # tanh-bounded SDF


def test_gradient_reaches_both_heads():
    torch.manual_seed(0)
    net = TwoHeadDiffusionUNet(**TINY)
    y = net(torch.randn(2, 2, 32, 32), torch.tensor([5, 500]))
    ((y[:, 0] - 0.3).pow(2).mean() + (y[:, 1] - 0.3).pow(2).mean()).backward()
    assert net.image_head[-1].conv.weight.grad.abs().sum() > 0
    assert net.mask_head[-1].conv.weight.grad.abs().sum() > 0
    assert net.unet.conv_in.conv.weight.grad.abs().sum() > 0  # the shared encoder learns from the mask head


def test_prediction_types_roundtrip():
    sched = DDPMScheduler(1000, schedule="linear_beta")
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    xt = sched.add_noise(x0, eps, t)
    for ptype in ("epsilon", "sample", "v_prediction"):
        target = training_target(ptype, x0, eps, t, sched.alphas_cumprod)
        torch.testing.assert_close(x0_from_output(ptype, target, xt, t, sched.alphas_cumprod), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(training_target("v_prediction", x0, eps, t, sched.alphas_cumprod),
                               sched.get_velocity(x0, eps, t))
    torch.testing.assert_close(eps_from_x0(x0, xt, t[:], sched.alphas_cumprod)[1:], eps[1:], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError):
        TwoHeadDiffusionUNet(prediction_type="x0", **TINY)


# ----------------------------------------------------------------------------- losses
def test_kendall_formula_and_fixed():
    k = KendallUncertaintyWeighting(init_log_vars=(0.5, -0.3))
    l_img, l_mask = torch.tensor(2.0), torch.tensor(0.4)
    expected = 0.5 * math.exp(-0.5) * 2.0 + 0.5 * 0.5 + 0.5 * math.exp(0.3) * 0.4 + 0.5 * -0.3
    assert float(k(l_img, l_mask).detach()) == pytest.approx(expected, rel=1e-6)
    assert float(k(l_img, l_mask, mask_valid=False).detach()) == pytest.approx(0.5 * math.exp(-0.5) * 2.0 + 0.25, rel=1e-6)
    k(l_img, l_mask).backward()
    # d/ds1 = -0.5 exp(-s1) L_img + 0.5
    assert float(k.log_vars.grad[0]) == pytest.approx(-0.5 * math.exp(-0.5) * 2.0 + 0.5, rel=1e-5)
    assert list(k.parameters())  # goes into the optimiser
    f = KendallUncertaintyWeighting(learnable=False, fixed_weights=(1.0, 0.25))
    assert float(f(l_img, l_mask)) == pytest.approx(2.0 + 0.1) and not list(f.parameters())


def test_unlabeled_samples_give_zero_mask_gradient():
    pred = torch.randn(4, 1, 8, 8, requires_grad=True)
    target = torch.rand(4, 1, 8, 8)
    labeled = torch.tensor([1, 0, 1, 0])
    loss, n = labeled_mse(pred, target, labeled)
    loss.backward()
    assert int(n) == 2
    assert float(loss.detach()) == pytest.approx(float(((pred[[0, 2]] - target[[0, 2]]) ** 2).mean().detach()), rel=1e-6)
    assert pred.grad[[1, 3]].abs().sum() == 0 and pred.grad[[0, 2]].abs().sum() > 0
    none, n0 = labeled_mse(pred, target, torch.zeros(4))
    assert float(none) == 0 and int(n0) == 0


def test_lpips_missing_weights_message_and_roi(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="squeezenet1_1-b8a52dc0.pth.*download_weights.py"):
        ROILPIPSLoss(net="squeeze", pretrained_backbone=True)
    assert backbone_weights_path("squeeze") == tmp_path / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    loss = ROILPIPSLoss(pretrained_backbone=False, reduction="none")
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    b = a.clone()
    b[:, :, :8, :8] = -1.0  # differ only in the top-left corner
    roi = torch.zeros(2, 1, 32, 32)
    roi[:, :, 20:, 20:] = 1  # far from the change
    assert loss(a, a).abs().max() < 1e-6
    assert (loss(a, b) > 0).all()
    assert (loss(a, b, roi) < loss(a, b)).all()


# ----------------------------------------------------------------------------- RePaint
@pytest.mark.parametrize("n,length,n_sample", [(1000, 10, 2), (250, 10, 10), (20, 5, 3), (12, 10, 2)])
def test_repaint_schedule_counts(n, length, n_sample):
    sched = repaint_schedule(n, length, n_sample)
    n_jump_points = len(range(0, n - length, length))  # jumps at 0, L, ..., < n - L
    calls = n + n_jump_points * (n_sample - 1) * length
    assert count_denoising_calls(sched) == calls
    assert len(sched) == 1 + calls + n_jump_points * (n_sample - 1) * length  # + forward steps, + start
    assert sched[0] == n - 1 and sched[-1] == -1
    assert all(abs(a - b) == 1 for a, b in zip(sched[:-1], sched[1:]))
    if (n, length, n_sample) == (1000, 10, 2):
        assert calls == 1990  # paper setting: 1000 + 99 * 10
    if (n, length, n_sample) == (250, 10, 10):
        assert calls == 2410  # original RePaint: 250 + 24 * 9 * 10


class _ConstNet(torch.nn.Module):
    """x0-predicting stub: image = 0.25 everywhere, SDF = -0.5; counts calls."""

    prediction_type = "sample"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return torch.cat([torch.full_like(x[:, :1], 0.25), torch.full_like(x[:, :1], -0.5)], 1)


@pytest.mark.parametrize("cls,kw", [(AortaRePaintInferer, dict(num_inference_steps=30, jump_length=5, jump_n_sample=2)),
                                    (AortaDDIMInferer, dict(num_inference_steps=10))])
def test_known_region_is_noised_ncct_and_final_fusion(cls, kw):
    sched = DDPMScheduler(1000)
    inferer = cls(sched, seed=0, progress=False, **kw)
    ncct = torch.rand(2, 1, 16, 16) * 2 - 1
    roi = torch.zeros(2, 1, 16, 16)
    roi[:, :, 4:10, 5:12] = 1
    seen = []

    def check(index, x, x_known, r):
        out = r < 0.5
        assert torch.equal(x[out], x_known[out])  # outside the ROI: exactly the known sample
        a = inferer.abar(index)
        noise = (x_known - math.sqrt(a) * ncct) / math.sqrt(max(1 - a, 1e-12)) if index >= 0 else None
        if index >= 0 and a < 0.999:
            assert abs(float(noise.mean())) < 0.3 and 0.7 < float(noise.std()) < 1.3  # fresh N(0,1) noise
        seen.append(index)

    net = _ConstNet()
    out = inferer(torch.cat([ncct, roi], 1), net, callback=check)
    calls = count_denoising_calls(inferer.schedule())
    assert net.calls == calls == len(seen) and seen[-1] == -1
    expected = 0.25 * roi + ncct * (1 - roi)  # x0 * roi + ncct * (1 - roi)
    torch.testing.assert_close(out[:, :1], expected, atol=1e-6, rtol=0)
    assert torch.all(out[:, 1] == -0.5) and torch.all(out[:, 2] == 0)
    assert torch.all(out[:, 3] == 1)  # SDF -0.5 everywhere: every sample votes lumen


def test_inferer_volume_slices_resize_and_samples():
    sched = DDPMScheduler(1000)
    net = TwoHeadDiffusionUNet(**TINY).eval()
    torch.nn.init.normal_(net.image_head[-1].conv.weight, std=0.1)  # non-degenerate x0 head
    inferer = AortaDDIMInferer(sched, num_inference_steps=3, num_samples=2, image_size=16, slice_batch_size=2,
                               seed=1, progress=False)
    vol = torch.zeros(1, 2, 20, 24, 5)
    vol[:, 0] = torch.rand(20, 24, 5) * 2 - 1
    vol[:, 1, 6:14, 8:16, 1:4] = 1
    out = inferer(vol, net)
    assert out.shape == (1, 4, 20, 24, 5)  # image, SDF, image std, lumen vote
    outside = vol[:, 1] < 0.5
    torch.testing.assert_close(out[:, 0][outside], vol[:, 0][outside])  # geometry: NCCT kept outside the ROI
    assert torch.all(out[:, 1, ..., [0, 4]] == 1)  # slices without ROI are not sampled
    assert out[:, 2][~outside].max() > 0  # std map from 2 samples
    assert torch.all(out[:, 3, ..., [0, 4]] == 0)  # and no votes there
    assert out[:, 3].min() >= 0 and out[:, 3].max() <= 1  # fraction of samples voting lumen (resized: bilinear)



# ----------------------------------------------------------------------------- clinical metrics
def _ellipse(shape, spacing, a_mm, b_mm, center_mm):
    """Digital ellipse: semi-axis a_mm along array axis 1, b_mm along axis 0, physical coordinates."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    y, x = yy * spacing[0] - center_mm[0], xx * spacing[1] - center_mm[1]
    return ((x / a_mm) ** 2 + (y / b_mm) ** 2) <= 1.0


@pytest.mark.parametrize("spacing", [(0.7, 0.9), (1.2, 0.6)])
def test_diameters_disk_and_ellipse_anisotropic(spacing):
    disk = _ellipse((128, 128), spacing, 20.0, 20.0, (45.0, 45.0))
    d_max, d_min = lumen_diameters_mm(disk, spacing)
    tol = max(spacing)  # within one voxel
    assert abs(d_max - 40.0) <= tol and abs(d_min - 40.0) <= tol
    ell = _ellipse((128, 128), spacing, 24.0, 10.0, (45.0, 45.0))
    d_max, d_min = lumen_diameters_mm(ell, spacing)
    assert abs(d_max - 48.0) <= tol and abs(d_min - 20.0) <= tol
    assert lumen_diameters_mm(np.zeros((8, 8)), spacing) == (0.0, 0.0)
    # MAE: prediction is the 20 mm disk, reference the ellipse; an empty prediction counts as 0 mm
    small = _ellipse((128, 128), spacing, 10.0, 10.0, (45.0, 45.0))
    mae = diameter_mae_mm([small, np.zeros_like(small)], [ell, ell], spacing, kind="max")
    assert abs(mae - ((48.0 - 20.0) + 48.0) / 2) <= tol


def test_thrombus_area_on_known_ring():
    spacing = (0.8, 0.6)
    outer = _ellipse((128, 128), spacing, 25.0, 25.0, (50.0, 38.0))
    inner = _ellipse((128, 128), spacing, 15.0, 15.0, (50.0, 38.0))
    ring = outer & ~inner
    expected = math.pi * (25.0**2 - 15.0**2)  # mm^2
    assert abs(area_mm2(ring, spacing) - expected) / expected < 0.02
    thinner = outer & ~_ellipse((128, 128), spacing, 20.0, 20.0, (50.0, 38.0))
    err = thrombus_area_error_percent(thinner, ring, spacing)
    exp_err = abs(math.pi * (25.0**2 - 20.0**2) - expected) / expected * 100  # 43.75 %
    assert abs(err - exp_err) < 2.0
    assert math.isnan(thrombus_area_error_percent(ring, np.zeros_like(ring), spacing))
    assert mean_thrombus_area_error_percent([ring, thinner, ring], [ring, ring, np.zeros_like(ring)], spacing) \
        == pytest.approx(err / 2)


def test_evaluation_summary_spearman_and_flags(tmp_path):
    from tools.aortadiff.evaluation import AortaDiffEvaluation
    from tools.metrics.overlap import mask_dice as dice

    assert dice(np.ones((2, 2)), np.zeros((2, 2))) == 0.0 and math.isnan(dice(np.zeros(3), np.zeros(3)))
    ev = AortaDiffEvaluation(str(tmp_path / "d.json"), str(tmp_path), str(tmp_path), uncertainty_threshold=2.5)
    cases = [{"case_id": f"c{i}", "labeled": True, "uncertainty_score": float(i), "dice_lumen": 1.0 - 0.1 * i,
              "dice_thrombus": 0.5, "diam_max_mae_mm": 4.0 - i, "unc_mask_entropy": float(i),
              "unc_image_std_hu": float(-i)} for i in range(4)]  # error rises, diameter MAE falls with the score
    unc = ev._summary(cases, "skipped")["uncertainty"]
    assert unc["spearman_dice_lumen_error"]["rho"] == pytest.approx(1.0)
    assert unc["spearman_diam_max_mae_mm"]["rho"] == pytest.approx(-1.0)
    assert unc["spearman_by_measure"]["image_std_hu"]["dice_lumen_error"]["rho"] == pytest.approx(-1.0)
    assert "dice_thrombus_error" not in unc["spearman_by_measure"]["mask_entropy"]  # constant error: no rank
    assert unc["flagged_cases"] == ["c3"]
    worst = unc["flag_at_threshold"]["dice_lumen_error"]  # worst 30 % of 4 = 2 cases: c3, c2; c3 flagged
    assert (worst["n_worst"], worst["caught"], worst["false_alarms"]) == (2, 1, 0)
    assert "not computed" in ev._summary(cases[:2], "skipped")["uncertainty"]["spearman"]


# ----------------------------------------------------------------------------- AortaDiffLoss
def _target(b: int = 2, size: int = 8, labeled=(1.0, 0.0)) -> dict:
    """Target dict as DiffusionTargetPrepareBatch builds it: x_start = 0, SDF target = 0, ROI everywhere."""
    return {"x_start": torch.zeros(b, 1, size, size), "noise": torch.randn(b, 1, size, size),
            "timesteps": torch.tensor([10, 500])[:b], "roi": torch.ones(b, 1, size, size),
            "lumen_sdf": torch.zeros(b, 1, size, size), "labeled": torch.tensor(labeled)}


def _pred(image: float, sdf: tuple[float, ...] | None, b: int = 2, size: int = 8) -> torch.Tensor:
    """(B, 1 [+ 1], H, W) output: constant image channel, per-sample constant SDF channel."""
    chans = [torch.full((b, 1, size, size), image)]
    if sdf is not None:
        chans.append(torch.tensor(sdf).reshape(b, 1, 1, 1).expand(b, 1, size, size))
    return torch.cat(chans, 1).clone().requires_grad_(True)


def test_aortadiff_loss_hand_values_and_unlabeled_zero_mask_gradient():
    """x0 head 0.5 against x_start 0: MSE 0.25; SDF 0.2 (labeled) / 3.0 (unlabeled) against 0: L_mask 0.04."""
    weighting = KendallUncertaintyWeighting()  # s1 = s2 = 0
    loss_fn = AortaDiffLoss(DDPMScheduler(1000), weighting, prediction_type="sample", image_mse_weight=2.0)
    pred = _pred(0.5, (0.2, 3.0))
    loss = loss_fn(pred, _target())
    expected = 0.5 * (2.0 * 0.25) + 0.5 * 0.04  # 0.5 e^-s1 L_img + 0.5 s1 + 0.5 e^-s2 L_mask + 0.5 s2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert pred.grad[1, 1].abs().sum() == 0  # unlabeled sample: no gradient through the SDF head
    assert pred.grad[0, 1].abs().sum() > 0 and pred.grad[:, 0].abs().sum() > 0
    assert weighting.log_vars.grad[1] != 0  # s2 learns from a batch with a labeled sample
    t = loss_fn.last_terms
    assert set(t) == set(TERM_NAMES)
    assert t["loss_mse"] == pytest.approx(0.25) and t["loss_img"] == pytest.approx(0.5) and t["loss_lpips"] == 0
    assert t["loss_mask"] == pytest.approx(0.04, rel=1e-5) and t["n_labeled"] == 1
    assert (t["s1"], t["s2"], t["w_img"], t["w_mask"]) == (0.0, 0.0, 0.5, 0.5)
    assert all(isinstance(v, float) for v in t.values())


def test_aortadiff_loss_all_unlabeled_drops_kendall_s2_term():
    weighting = KendallUncertaintyWeighting(init_log_vars=(0.5, -0.3))
    loss_fn = AortaDiffLoss(DDPMScheduler(1000), weighting, prediction_type="sample")
    pred = _pred(0.5, (0.2, 3.0))
    loss = loss_fn(pred, _target(labeled=(0.0, 0.0)))
    assert float(loss.detach()) == pytest.approx(0.5 * math.exp(-0.5) * 0.25 + 0.5 * 0.5, rel=1e-6)  # no 0.5 s2
    loss.backward()
    assert pred.grad[:, 1].abs().sum() == 0
    assert weighting.log_vars.grad[1] == 0  # s2 is not pushed towards -inf by a batch without lumen labels
    assert loss_fn.last_terms["n_labeled"] == 0 and loss_fn.last_terms["loss_mask"] == 0


def test_aortadiff_loss_cdm_without_mask_head():
    """Synthesis-only CDM: 1-channel output, fixed weights (1, 0), image term only, eps parameterisation."""
    weighting = KendallUncertaintyWeighting(learnable=False, fixed_weights=(1.0, 0.0))
    loss_fn = AortaDiffLoss(DDPMScheduler(1000), weighting, prediction_type="epsilon", use_mask_head=False)
    target = _target()
    pred = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = loss_fn(pred, target)
    assert float(loss.detach()) == pytest.approx(float((target["noise"] ** 2).mean()), rel=1e-6)  # MSE(eps_hat, eps)
    assert set(loss_fn.last_terms) == {"loss_img", "loss_mse", "loss_lpips", "w_img", "w_mask"}
    with pytest.raises(ValueError, match="SDF channels"):  # a mask-head loss on a 1-channel output
        AortaDiffLoss(DDPMScheduler(1000), KendallUncertaintyWeighting())(pred, target)
    with pytest.raises(ValueError, match="prediction_type"):
        AortaDiffLoss(DDPMScheduler(1000), weighting, prediction_type="x0")


class _L1Stub(torch.nn.Module):
    """Stands in for ROILPIPSLoss: ROI-mean |pred - target|; records its inputs."""

    def forward(self, pred, target, roi):
        self.seen = (pred.detach(), target, roi)
        return ((pred - target).abs() * roi).sum() / roi.sum()


def test_aortadiff_loss_lpips_on_clamped_x0_from_the_noised_image():
    """eps head: x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) with x_t = scheduler.add_noise(x0, eps, t)."""
    torch.manual_seed(0)
    sched = DDPMScheduler(1000)
    stub = _L1Stub()
    loss_fn = AortaDiffLoss(sched, KendallUncertaintyWeighting(learnable=False, fixed_weights=(1.0, 1.0)),
                            prediction_type="epsilon", lpips_loss=stub, lpips_weight=0.5, image_mse_weight=0.0)
    target = _target()
    target["x_start"] = torch.rand(2, 1, 8, 8) * 2 - 1
    target["timesteps"] = torch.tensor([999, 5])
    target["roi"][:, :, :4] = 0
    eps_hat = torch.randn(2, 1, 8, 8) * 3
    loss = loss_fn(torch.cat([eps_hat, torch.zeros(2, 1, 8, 8)], 1), target)
    x_t = sched.add_noise(target["x_start"], target["noise"], target["timesteps"])
    abar = sched.alphas_cumprod[target["timesteps"]].reshape(-1, 1, 1, 1)
    x0_hat = ((x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()).clamp(-1.5, 1.5)
    torch.testing.assert_close(stub.seen[0], x0_hat, atol=1e-4, rtol=1e-4)
    assert stub.seen[0].abs().max() == pytest.approx(1.5)  # at t = 999 x0_hat is far out of range: clamped
    assert torch.equal(stub.seen[2], target["roi"])
    lpips = float(((x0_hat - target["x_start"]).abs() * target["roi"]).sum() / target["roi"].sum())
    assert loss_fn.last_terms["loss_lpips"] == pytest.approx(lpips, rel=1e-4)
    assert float(loss) == pytest.approx(0.5 * lpips, rel=1e-4)  # image_mse_weight 0, L_mask 0 (SDF exact)
