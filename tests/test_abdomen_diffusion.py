"""Improved-DDPM hybrid loss and learned-range sampling (abdomen_semantic_synthesis bundle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from monai.networks.schedulers import DDPMScheduler

from tools.abdomen.hybrid_loss import HybridDiffusionLoss
from tools.diffusion.learned_range_sampler import LearnedRangeSampler
from tools.diffusion.schedule import spaced_timesteps

T = 1000


def _np_schedule():
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return betas, abar, abar_prev, post_var


def _hand_model(x_t, eps, v, t):
    """Hand-computed model mean and log variance of p(x_{t-1} | x_t) (numpy float64)."""
    betas, abar, abar_prev, post_var = _np_schedule()
    x0 = (x_t - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    mean = (betas[t] * np.sqrt(abar_prev[t]) * x0 + (1 - abar_prev[t]) * np.sqrt(1 - betas[t]) * x_t) / (1 - abar[t])
    log_tilde = np.log(post_var[1] if t == 0 else post_var[t])  # log beta_tilde_0 = log 0 -> value at t = 1
    f = (v + 1) / 2
    logvar = f * np.log(betas[t]) + (1 - f) * log_tilde
    return mean, logvar


@pytest.fixture(scope="module")
def loss_fn():
    return HybridDiffusionLoss(DDPMScheduler(num_train_timesteps=T, schedule="linear_beta"), vlb_weight=0.001)


def test_vlb_kl_matches_hand_computed_gaussian_kl(loss_fn):
    rng = np.random.default_rng(0)
    t = 37
    x0 = rng.uniform(-1, 1, (1, 1, 4, 4))
    noise = rng.standard_normal(x0.shape)
    eps_hat = noise + 0.3 * rng.standard_normal(x0.shape)
    v = rng.uniform(-1, 1, x0.shape)
    betas, abar, abar_prev, post_var = _np_schedule()
    x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise
    true_mean = (betas[t] * np.sqrt(abar_prev[t]) * x0 + (1 - abar_prev[t]) * np.sqrt(1 - betas[t]) * x_t) / (1 - abar[t])
    s1 = np.sqrt(post_var[t])
    m2, logvar2 = _hand_model(x_t, eps_hat, v, t)
    s2 = np.exp(0.5 * logvar2)
    kl_nats = np.log(s2 / s1) + (s1**2 + (true_mean - m2) ** 2) / (2 * s2**2) - 0.5
    expected_bits = kl_nats.mean() / math.log(2)

    out = torch.tensor(np.concatenate([eps_hat, v], 1), dtype=torch.float32)
    target = {
        "x_start": torch.tensor(x0, dtype=torch.float32),
        "noise": torch.tensor(noise, dtype=torch.float32),
        "timesteps": torch.tensor([t]),
    }
    total = loss_fn(out, target)
    got_vb = loss_fn.last_terms["vb"]
    assert got_vb == pytest.approx(expected_bits, rel=1e-3)
    # per-sample loss = mse + lambda * T * L_t = mse + L_t at lambda 0.001, T 1000
    mse = ((eps_hat - noise) ** 2).mean()
    assert float(total) == pytest.approx(mse + expected_bits, rel=1e-3)
    assert loss_fn.vlb_scale == pytest.approx(1.0)


def test_decoder_nll_at_t0_matches_hand_computed(loss_fn):
    rng = np.random.default_rng(1)
    x0 = rng.integers(0, 256, (1, 1, 4, 4)) / 127.5 - 1.0
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # the two open-ended edge bins
    noise = rng.standard_normal(x0.shape)
    eps_hat = noise + 0.05 * rng.standard_normal(x0.shape)
    v = rng.uniform(-1, 1, x0.shape)
    _, abar, _, _ = _np_schedule()
    x_t = np.sqrt(abar[0]) * x0 + np.sqrt(1 - abar[0]) * noise
    mean, logvar = _hand_model(x_t, eps_hat, v, 0)
    sd = np.exp(0.5 * logvar)
    upper = norm.cdf((x0 + 1 / 255 - mean) / sd)
    lower = norm.cdf((x0 - 1 / 255 - mean) / sd)
    p = np.where(x0 < -0.999, upper, np.where(x0 > 0.999, 1 - lower, upper - lower))
    expected_bits = (-np.log2(np.maximum(p, 1e-12))).mean()

    out = torch.tensor(np.concatenate([eps_hat, v], 1), dtype=torch.float32)
    x_t_torch = torch.tensor(x_t, dtype=torch.float32)
    got = loss_fn.vb_terms_bits(out, torch.tensor(x0, dtype=torch.float32), x_t_torch, torch.tensor([0]))
    assert float(got) == pytest.approx(expected_bits, rel=2e-3)


def test_vlb_gradient_does_not_reach_mean_output(loss_fn):
    torch.manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 5, 700])
    out = torch.randn(3, 2, 8, 8, requires_grad=True)
    x_t = loss_fn.terms.q_sample(x0, noise, t)
    loss_fn.vb_terms_bits(out, x0, x_t, t).sum().backward()
    assert torch.count_nonzero(out.grad[:, :1]) == 0  # eps (mean) channel untouched
    assert torch.count_nonzero(out.grad[:, 1:]) > 0  # variance channel trained
    # the full hybrid loss: eps gradient is exactly the MSE gradient
    out2 = out.detach().clone().requires_grad_(True)
    loss_fn(out2, {"x_start": x0, "noise": noise, "timesteps": t}).sum().backward()
    mse_grad = 2 * (out.detach()[:, :1] - noise) / noise[0].numel()
    torch.testing.assert_close(out2.grad[:, :1], mse_grad, rtol=1e-4, atol=1e-7)


def test_learned_range_step_uses_log_space_interpolation():
    scheduler = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta")
    sampler = LearnedRangeSampler(scheduler, sampler="ddpm", num_inference_steps=T, progress=False)
    betas, _, _, post_var = _np_schedule()
    v = torch.tensor([-0.6, 0.0, 0.8]).reshape(3, 1, 1, 1)
    f = (v.double() + 1) / 2
    for t in (0, 1, 10, 500, 999):
        tilde = post_var[1] if t == 0 else post_var[t]
        expected = f * math.log(betas[t]) + (1 - f) * math.log(tilde)
        torch.testing.assert_close(sampler.step_log_variance(v.double(), t), expected)
    # the noise actually added in a step has exactly that standard deviation
    t = 400
    x_t = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    out = torch.cat([torch.zeros_like(x_t), v.double().expand_as(x_t)], 1)
    g = torch.Generator().manual_seed(3)
    x_prev, x0_hat = sampler.step(out, t, x_t, generator=g)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mean = sampler.terms.q_posterior(x0_hat, x_t, torch.full((3,), t))[0]
    expected_sd = torch.exp(0.5 * (f * math.log(betas[t]) + (1 - f) * math.log(post_var[t])))
    torch.testing.assert_close(x_prev - mean, expected_sd * z)
    # MONAI 1.6's learned_range interpolates the variances linearly (and uses beta_tilde_0 = 0 at t = 0):
    # it would sample a log-space-trained model with the wrong noise level. Shown at f = 0.5.
    monai_sched = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta", variance_type="learned_range")
    for t in (1, 2):
        monai_var = float(monai_sched._get_variance(t, predicted_variance=torch.tensor(0.0)))
        ours = float(torch.exp(sampler.step_log_variance(torch.zeros(1, 1, 1, 1, dtype=torch.float64), t)))
        assert monai_var == pytest.approx(0.5 * betas[t] + 0.5 * post_var[t], rel=1e-4)
        assert ours == pytest.approx(math.sqrt(betas[t] * post_var[t]), rel=1e-6)
        assert monai_var > 1.03 * ours


def test_respaced_chain_and_oracle_sampling_recovers_x0():
    scheduler = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta")
    _, abar, _, _ = _np_schedule()
    ts = spaced_timesteps(T, 10)
    assert ts[0] == 0 and ts[-1] == T - 1 and len(ts) == 10
    sampler = LearnedRangeSampler(scheduler, sampler="ddpm", num_inference_steps=10, progress=False)
    # respaced betas: 1 - abar_{t_i} / abar_{t_{i-1}}
    a = abar[ts.numpy()]
    expected_betas = 1 - a / np.concatenate([[1.0], a[:-1]])
    np.testing.assert_allclose(sampler.terms.betas.numpy(), expected_betas, rtol=1e-5)

    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    abar_t = torch.tensor(abar, dtype=torch.float32)

    def oracle(x, t):  # knows x0: returns the exact eps for x_t, variance value 0
        x_t = x[:, :1]
        a_t = abar_t[t].reshape(-1, 1, 1, 1)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    cond = torch.zeros(2, 3, 8, 8)
    for kind in ("ddpm", "ddim"):
        s = LearnedRangeSampler(scheduler, sampler=kind, num_inference_steps=5, progress=False)
        out = s(cond, oracle, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def _oracle_network(x0: torch.Tensor, dc_gain: float | None = None):
    """eps network that knows x0 (the exact eps for x_t; variance value 0); ``dc_gain`` replaces the spatial mean
    of its eps by ``dc_gain`` times the mean of x_t, the fault of an under-trained network at high t."""
    abar = torch.tensor(_np_schedule()[1], dtype=torch.float32)

    def net(x, t):
        x_t = x[:, :1]
        a_t = abar[t].reshape(-1, 1, 1, 1)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        if dc_gain is not None:
            eps = eps - eps.mean((2, 3), keepdim=True) + dc_gain * x_t.mean((2, 3), keepdim=True)
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    return net


def test_eps_dc_gain_is_one_over_sqrt_one_minus_abar_for_the_oracle_and_the_set_gain_otherwise():
    from tools.diffusion.dc_gain import eps_dc_gain

    _, abar, _, _ = _np_schedule()
    x0, cond = torch.rand(3, 1, 8, 8) * 2 - 1, torch.zeros(3, 2, 8, 8)
    g = eps_dc_gain(_oracle_network(x0), cond, [999, 500, 100], generator=torch.Generator().manual_seed(0))
    assert g.shape == (3, 3)
    expected = 1 / np.sqrt(1 - abar[[999, 500, 100]])  # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
    np.testing.assert_allclose(g.mean(1).numpy(), expected, rtol=1e-4)
    g = eps_dc_gain(_oracle_network(x0, dc_gain=0.1), cond, [999, 100])
    np.testing.assert_allclose(g.numpy(), 0.1, rtol=1e-4)


def test_noise_mean_study_finds_the_bright_failures_of_a_network_that_drops_the_noise_mean():
    from tools.abdomen.noise_mean import noise_mean_study

    scheduler = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta")
    sampler = LearnedRangeSampler(scheduler, sampler="ddim", num_inference_steps=25, progress=False)
    x0 = torch.full((8, 1, 16, 16), -0.8)  # a dark slice
    batches = [{"image": x0, "label": torch.zeros(8, 2, 16, 16)}]
    exact = noise_mean_study(sampler, _oracle_network(x0), batches, seeds=[0, 1])
    assert exact["positive"]["failed"] == exact["negative"]["failed"] == 0
    assert exact["positive"]["n"] + exact["negative"]["n"] == 16
    faulty = noise_mean_study(sampler, _oracle_network(x0, dc_gain=0.0), batches, seeds=[0, 1])
    pos, neg = faulty["positive"], faulty["negative"]
    assert pos["n"] > 0 and neg["n"] > 0
    assert pos["failed"] == pos["n"] and neg["failed"] == 0  # brightness follows the sign of the noise's mean
    # the negative-mean slices come out black, x_0 clipped to -1: error 0.2 of the range 2, PSNR 20 dB
    assert neg["mean_psnr"] == pytest.approx(20.0, abs=1e-3)
    assert faulty["correlation"] < -0.5
    np.testing.assert_allclose(faulty["noise_mean"], exact["noise_mean"])  # the seeds fix the starting noise
