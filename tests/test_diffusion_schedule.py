"""Schedule math of tools.diffusion.schedule against hand-computed values, and the samplers' timestep choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai.networks.schedulers import DDPMScheduler

from tools.aortadiff.inferers import AortaDDIMInferer, AortaRePaintInferer
from tools.diffusion.learned_range_sampler import LearnedRangeSampler
from tools.diffusion.schedule import (
    PREDICTION_TYPES,
    ScheduleTerms,
    ddim_step,
    eps_from_x0,
    noise_to_level,
    q_jump,
    q_posterior_mean_variance,
    q_sample,
    respaced_betas,
    spaced_timesteps,
    training_target,
    x0_from_output,
)

T = 1000
F64 = dict(rtol=1e-12, atol=1e-12)


def _linear_abar() -> np.ndarray:
    """alphas_cumprod of the linear 1e-4..0.02 schedule over T = 1000, float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))


# ------------------------------------------------------------------------------------------ respacing
def test_spaced_timesteps_hand_values_and_limits():
    assert spaced_timesteps(T, 1).tolist() == [T - 1]  # one step starts from pure noise
    assert spaced_timesteps(T, 2).tolist() == [0, T - 1]
    assert spaced_timesteps(T, 3).tolist() == [0, 500, 999]  # 499.5 -> 500 (half to even)
    assert spaced_timesteps(T, 10).tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert spaced_timesteps(T, T).tolist() == list(range(T))
    # exact arithmetic: 21 * 999 / 42 = 499.5 -> 500 (float32 linspace would give 499.49997 -> 499)
    assert int(spaced_timesteps(T, 43)[21]) == 500
    for n in (2, 7, 50, 333, 999):
        ts = spaced_timesteps(T, n)
        assert len(ts) == n and ts.dtype == torch.long and ts[0] == 0 and ts[-1] == T - 1
        assert bool((ts[1:] > ts[:-1]).all())
    for bad in (0, -1, T + 1):
        with pytest.raises(ValueError, match="num_inference_steps"):
            spaced_timesteps(T, bad)


def test_respaced_betas_reproduce_the_chosen_alpha_bars():
    abar = torch.tensor(_linear_abar())
    for n in (1, 2, 10, 50):
        ts = spaced_timesteps(T, n)
        betas = respaced_betas(abar, ts)
        a = abar[ts]
        hand = 1.0 - a / torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])  # 1 - abar_{t_i} / abar_{t_{i-1}}
        torch.testing.assert_close(betas, hand, **F64)
        torch.testing.assert_close(torch.cumprod(1.0 - betas, 0), a, **F64)
        torch.testing.assert_close(ScheduleTerms.respaced(abar, ts).alphas_cumprod, a, **F64)
    # respacing to every timestep gives the original betas back
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    torch.testing.assert_close(respaced_betas(abar, torch.arange(T)), betas, rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------------------------------ forward noising
def test_q_sample_and_forward_jump_hand_values():
    abar = torch.tensor(_linear_abar())
    x0 = torch.tensor([[[[0.5, -1.0]]], [[[0.25, 0.0]]]], dtype=torch.float64)
    eps = torch.tensor([[[[1.0, 2.0]]], [[[-0.5, 3.0]]]], dtype=torch.float64)
    t = torch.tensor([10, 700])
    hand = torch.stack([math.sqrt(abar[k]) * x0[i] + math.sqrt(1 - abar[k]) * eps[i] for i, k in enumerate(t.tolist())])
    torch.testing.assert_close(q_sample(x0, eps, t, abar), hand, **F64)
    torch.testing.assert_close(noise_to_level(x0, eps, float(abar[10])), math.sqrt(abar[10]) * x0
                               + math.sqrt(1 - abar[10]) * eps, **F64)
    # q(x_b | x_a) with ratio r = abar_b / abar_a: x0 enters with sqrt(abar_b), total noise variance 1 - abar_b
    a, b = float(abar[100]), float(abar[400])
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    zero = torch.zeros_like(one)
    x_a_signal = noise_to_level(one, zero, a)  # sqrt(a) x0 with x0 = 1
    torch.testing.assert_close(q_jump(x_a_signal, zero, a, b), one * math.sqrt(b), **F64)
    c1 = q_jump(noise_to_level(zero, one, a), zero, a, b)  # coefficient of the first noise
    c2 = q_jump(zero, one, a, b)  # coefficient of the second noise
    torch.testing.assert_close(c1**2 + c2**2, one * (1 - b), **F64)


# ------------------------------------------------------------------------------ x0 / eps / v conversions
def test_x0_eps_v_round_trips_and_v_hand_value():
    abar = torch.tensor(_linear_abar())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    x_t = q_sample(x0, eps, t, abar)
    a = abar[t].sqrt().reshape(-1, 1, 1, 1)
    s = (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(training_target("v_prediction", x0, eps, t, abar), a * eps - s * x0, **F64)
    for ptype in PREDICTION_TYPES:
        target = training_target(ptype, x0, eps, t, abar)
        torch.testing.assert_close(x0_from_output(ptype, target, x_t, t, abar), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_x0(x0, x_t, t, abar), eps, rtol=1e-9, atol=1e-9)
    # ScheduleTerms uses the same conversion
    terms = ScheduleTerms(torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    torch.testing.assert_close(terms.predict_xstart(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="prediction_type"):
        x0_from_output("noise", eps, x_t, t, abar)


def test_float64_inputs_stay_float64_and_exact():
    abar_np = _linear_abar()
    abar = torch.tensor(abar_np)  # float64
    x_t = torch.tensor([[[[0.3]]], [[[-0.7]]]], dtype=torch.float64)
    out = torch.tensor([[[[1.1]]], [[[0.4]]]], dtype=torch.float64)
    t = torch.tensor([3, 998])
    a, s = np.sqrt(abar_np[[3, 998]]), np.sqrt(1 - abar_np[[3, 998]])
    hand_x0 = (x_t.flatten().numpy() - s * out.flatten().numpy()) / a
    got = x0_from_output("epsilon", out, x_t, t, abar)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.flatten().numpy(), hand_x0, rtol=1e-13)  # not float32 alpha-bars
    hand_v_x0 = a * x_t.flatten().numpy() - s * out.flatten().numpy()
    got_v = x0_from_output("v_prediction", out, x_t, t, abar)
    np.testing.assert_allclose(got_v.flatten().numpy(), hand_v_x0, rtol=1e-13)
    np.testing.assert_allclose(q_sample(x_t, out, t, abar).flatten().numpy(),
                               a * x_t.flatten().numpy() + s * out.flatten().numpy(), rtol=1e-13)
    # float32 images keep float32, whatever the alpha-bars' dtype
    assert x0_from_output("epsilon", out.float(), x_t.float(), t, abar).dtype == torch.float32
    assert q_sample(x_t.float(), out.float(), t, abar.float()).dtype == torch.float32


# -------------------------------------------------------------------------------------- DDPM posterior
def _bayes_posterior(abar_t: float, abar_prev: float, x0: float, x_t: float) -> tuple[float, float]:
    """Bayes' rule by hand for scalars: posterior (mean, variance) of x_prev.

    q(x_prev | x0) = N(sqrt(abar_prev) x0, 1 - abar_prev), q(x_t | x_prev) = N(sqrt(alpha) x_prev, beta).
    """
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    precision = 1 / (1 - abar_prev) + alpha / beta
    var = 1 / precision
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * x_t / beta)
    return mean, var


def test_posterior_mean_variance_at_known_t_of_a_linear_schedule():
    betas = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)  # abar = 0.9, 0.72, 0.504
    terms = ScheduleTerms(betas)
    torch.testing.assert_close(terms.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64), **F64)
    x0 = torch.tensor([[[[0.5]]]], dtype=torch.float64)
    x_t = torch.tensor([[[[-0.2]]]], dtype=torch.float64)
    t = torch.tensor([2])
    # by hand at t = 2: beta 0.3, abar_t 0.504, abar_prev 0.72
    c_x0 = math.sqrt(0.72) * 0.3 / (1 - 0.504)
    c_xt = math.sqrt(0.7) * (1 - 0.72) / (1 - 0.504)
    var = 0.3 * (1 - 0.72) / (1 - 0.504)
    mean, logvar = terms.q_posterior(x0, x_t, t)
    assert float(mean) == pytest.approx(c_x0 * 0.5 + c_xt * -0.2, rel=1e-12)
    assert float(logvar) == pytest.approx(math.log(var), rel=1e-12)
    assert (float(mean), var) == pytest.approx(_bayes_posterior(0.504, 0.72, 0.5, -0.2), rel=1e-12)
    # clipped log variance: t = 0 (variance 0) takes the t = 1 value 0.2 (1 - 0.9) / (1 - 0.72)
    var1 = 0.2 * (1 - 0.9) / (1 - 0.72)
    torch.testing.assert_close(terms.posterior_variance, torch.tensor([0.0, var1, var], dtype=torch.float64), **F64)
    torch.testing.assert_close(terms.posterior_log_variance_clipped,
                               torch.log(torch.tensor([var1, var1, var], dtype=torch.float64)), **F64)
    # the tensor-function form between any two levels (a respaced step) agrees with Bayes' rule
    for abar_t, abar_prev in ((0.504, 0.9), (0.02, 0.5), (0.9, 1.0 - 1e-9)):
        m, v = q_posterior_mean_variance(x0, x_t, abar_t, abar_prev)
        assert (float(m), float(v)) == pytest.approx(_bayes_posterior(abar_t, abar_prev, 0.5, -0.2), rel=1e-6)
    # to the clean image (abar_prev = 1): mean x0, variance 0
    m, v = q_posterior_mean_variance(x0, x_t, 0.9, 1.0)
    assert float(m) == pytest.approx(0.5, rel=1e-12) and float(v) == 0.0


def test_learned_range_log_variance_interpolates_log_space():
    terms = ScheduleTerms(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    var1, var2 = 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496
    v = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    for t, (log_beta, log_tilde) in ((0, (math.log(0.1), math.log(var1))), (2, (math.log(0.3), math.log(var2)))):
        got = terms.learned_range_log_variance(v, torch.full((3,), t)).flatten().tolist()
        assert got == pytest.approx([log_tilde, 0.5 * (log_beta + log_tilde), log_beta], rel=1e-12)
    one = ScheduleTerms(torch.tensor([0.99], dtype=torch.float64))  # a one-step chain stays finite
    assert torch.isfinite(one.posterior_log_variance_clipped).all()


# ------------------------------------------------------------------------------------------- DDIM step
def test_ddim_step_from_exact_x0_and_eps_lands_on_x_prev():
    abar = torch.tensor(_linear_abar())
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    t, t_prev = 600, 300
    x_t = q_sample(x0, eps, torch.tensor([t, t]), abar)
    x0_hat = x0_from_output("epsilon", eps, x_t, torch.tensor([t, t]), abar)
    eps_hat = eps_from_x0(x0_hat, x_t, torch.tensor([t, t]), abar)
    got = ddim_step(x0_hat, eps_hat, float(abar[t]), float(abar[t_prev]))
    hand = math.sqrt(abar[t_prev]) * x0 + math.sqrt(1 - abar[t_prev]) * eps
    torch.testing.assert_close(got, hand, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ddim_step(x0, eps, float(abar[t]), 1.0), x0, **F64)  # last step: x0
    # eta = 1: sigma^2 is the DDPM posterior variance, the eps coefficient sqrt(1 - abar_prev - sigma^2)
    a_t, a_p = float(abar[t]), float(abar[t_prev])
    var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    one, zero = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    assert float(ddim_step(zero, zero, a_t, a_p, eta=1.0, noise=one)) == pytest.approx(math.sqrt(var), rel=1e-12)
    assert float(ddim_step(zero, one, a_t, a_p, eta=1.0)) == pytest.approx(math.sqrt(1 - a_p - var), rel=1e-12)
    assert float(ddim_step(zero, zero, a_t, a_p, eta=0.0, noise=one)) == 0.0  # eta = 0 ignores the noise


# ----------------------------------------------------------------------- samplers: one step starts at T-1
class _RecordingNet(torch.nn.Module):
    """Records the timesteps it is called with; returns zeros with ``out_channels`` channels."""

    def __init__(self, out_channels: int, prediction_type: str | None = None) -> None:
        super().__init__()
        self.out_channels = out_channels
        if prediction_type is not None:
            self.prediction_type = prediction_type
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.tolist())
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])


@pytest.mark.parametrize("cls", [AortaDDIMInferer, AortaRePaintInferer])
def test_aortadiff_inferers_one_step_calls_the_network_at_last_timestep(cls):
    sched = DDPMScheduler(num_train_timesteps=T)
    ncct = torch.rand(2, 1, 8, 8) * 2 - 1
    roi = torch.zeros(2, 1, 8, 8)
    roi[:, :, 2:6, 2:6] = 1
    net = _RecordingNet(2, "epsilon")
    out = cls(sched, num_inference_steps=1, seed=0, progress=False)(torch.cat([ncct, roi], 1), net)
    assert net.seen == [[T - 1, T - 1]]
    # eps = 0 at pure noise: x0 = x_T / sqrt(abar_{T-1}), far from the input noise and clipped to [-1, 1]
    inside = roi > 0.5
    assert out[:, :1][inside].abs().max() <= 1.0 and (out[:, :1][inside].abs() == 1.0).float().mean() > 0.5
    net2 = _RecordingNet(2, "sample")
    cls(sched, num_inference_steps=5, seed=0, progress=False)(torch.cat([ncct, roi], 1), net2)
    assert [s[0] for s in net2.seen] == [999, 749, 500, 250, 0]  # spaced_timesteps(1000, 5), descending
    with pytest.raises(ValueError, match="num_inference_steps"):
        cls(sched, num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        cls(sched, num_inference_steps=T + 1)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_learned_range_sampler_one_step_calls_the_network_at_last_timestep(kind):
    sched = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta")
    abar = sched.alphas_cumprod
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    seen = []

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # exact eps for x_t at t, variance value 0
        seen.append(t.tolist())
        eps = eps_from_x0(x0, x[:, :1], t, abar)
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    sampler = LearnedRangeSampler(sched, sampler=kind, num_inference_steps=1, progress=False, seed=0)
    assert sampler.timesteps.tolist() == [T - 1]
    out = sampler(torch.zeros(2, 3, 8, 8), oracle)
    assert seen == [[T - 1, T - 1]]
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)  # one step from pure noise recovers x0
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="num_inference_steps"):
            LearnedRangeSampler(sched, sampler=kind, num_inference_steps=bad, progress=False)
