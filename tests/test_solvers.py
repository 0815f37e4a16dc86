"""The flow-matching samplers: schedules, single steps against the formulas, whole solves, upstream parity."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from ovi_attn_capture.sampling.solvers import SOLVERS, make_scheduler
from ovi_attn_render.common.errors import UserError

DATA = Path(__file__).parent / "data"


def shifted(sigma: float, shift: float) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)


def log_snr(sigma: float) -> float:
    return math.log(1 - sigma) - math.log(sigma)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------- schedules

def test_unipc_schedule_equals_upstream_json():
    expected = json.loads((DATA / "unipc_schedule_50_shift5.json").read_text())["unipc_50_shift5"]
    sched = make_scheduler("unipc", steps=50, shift=5.0)
    assert sched.timesteps.dtype == torch.int64 and sched.sigmas.dtype == torch.float32
    assert sched.timesteps.tolist() == expected["timesteps"]
    assert torch.equal(sched.sigmas, torch.tensor(expected["sigmas"], dtype=torch.float32))


def test_diffusers_default_unipc_schedule_is_not_upstreams():
    """Why UniPCScheduler passes its own sigmas: diffusers' default flow-sigma schedule starts at 1.0, upstream's at 0.999."""
    from diffusers import UniPCMultistepScheduler

    expected = json.loads((DATA / "unipc_schedule_50_shift5.json").read_text())["unipc_50_shift5"]
    theirs = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    theirs.set_timesteps(50)
    gap = (theirs.sigmas.float() - torch.tensor(expected["sigmas"])).abs().max().item()
    assert gap > 1e-3
    assert theirs.timesteps.tolist() != expected["timesteps"]


@pytest.mark.parametrize("steps, shift", [(50, 5.0), (10, 3.0), (1, 5.0)])
def test_unipc_schedule_formula(steps, shift):
    sched = make_scheduler("unipc", steps=steps, shift=shift)
    base = [0.999 * (1 - k / steps) for k in range(steps)]  # linspace(0.999, 0, steps + 1) without 0
    sig = [shifted(s, shift) for s in base]
    assert sched.sigmas.shape == (steps + 1,) and sched.sigmas[-1].item() == 0.0
    assert torch.allclose(sched.sigmas[:-1].double(), torch.tensor(sig, dtype=torch.float64), rtol=0, atol=1e-6)
    assert sched.timesteps.tolist() == [int(s * 1000) for s in sig]


@pytest.mark.parametrize("steps, shift", [(50, 5.0), (10, 3.0), (1, 5.0)])
def test_dpmpp_schedule_formula(steps, shift):
    """Upstream's get_sampling_sigmas: linspace(1, 0, steps + 1)[:steps], shifted; timesteps truncate sigma*1000."""
    sched = make_scheduler("dpm++", steps=steps, shift=shift)
    sig = [shifted(1 - k / steps, shift) for k in range(steps)]
    assert sched.sigmas.shape == (steps + 1,) and sched.sigmas[-1].item() == 0.0
    assert torch.allclose(sched.sigmas[:-1].double(), torch.tensor(sig, dtype=torch.float64), rtol=0, atol=1e-6)
    assert sched.timesteps.dtype == torch.int64
    assert sched.timesteps.tolist() == [int(s * 1000) for s in sig]
    assert sched.timesteps[0].item() == 1000


@pytest.mark.parametrize("steps, shift", [(50, 5.0), (10, 3.0)])
def test_euler_schedule_formula(steps, shift):
    """diffusers' FlowMatchEulerDiscreteScheduler(shift): linspace between its shifted training sigmas, shifted again."""
    sched = make_scheduler("euler", steps=steps, shift=shift)
    hi, lo = shifted(1.0, shift), shifted(1 / 1000, shift)  # largest and smallest training sigma
    sig = [shifted(hi + (lo - hi) * k / (steps - 1), shift) for k in range(steps)]
    assert sched.sigmas.shape == (steps + 1,) and sched.sigmas[-1].item() == 0.0
    assert torch.allclose(sched.sigmas[:-1].double(), torch.tensor(sig, dtype=torch.float64), rtol=0, atol=1e-6)
    # Upstream feeds the model these float timesteps as they are (not truncated).
    assert sched.timesteps.dtype == torch.float32
    assert torch.allclose(sched.timesteps.double(), 1000 * torch.tensor(sig, dtype=torch.float64), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- single steps

def test_unipc_first_step_is_the_first_order_closed_form():
    sched = make_scheduler("unipc", steps=50, shift=5.0)
    x, v = randn(1, 4, 3, 5, seed=0), randn(1, 4, 3, 5, seed=1)
    out = sched.step(v, sched.timesteps[0], x)

    s, t = sched.sigmas[0].item(), sched.sigmas[1].item()
    xd, vd = x.double(), v.double()
    x0 = xd - s * vd
    h = log_snr(t) - log_snr(s)
    expected = t / s * xd - (1 - t) * (math.exp(-h) - 1) * x0
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_last_step_returns_the_x0_prediction_exactly(name):
    sched = make_scheduler(name, steps=4, shift=5.0)
    x = randn(1, 2, 3, 4, seed=0, dtype=torch.bfloat16)
    for i, t in enumerate(sched.timesteps):
        v = randn(1, 2, 3, 4, seed=10 + i, dtype=torch.bfloat16)
        x0 = x - sched.sigmas[i] * v
        x = sched.step(v, t, x)
    assert torch.equal(x, x0)


def unipc_bh2_reference(sigmas: list[float], velocity, x: torch.Tensor) -> list[torch.Tensor]:
    """UniPC-2 (bh2, x0 prediction, first-order final step) in float64 straight from the paper's formulas.

    Returns the sample after every step. Weights: b_k = k! g_k / B(h), g_k = (e^hh - sum_{j<=k} hh^j/j!) / hh^k,
    hh = -h, B(h) = e^hh - 1; predictor-2 uses rho = 1/2, corrector-1 rho = 1/2, corrector-2 solves
    [[1, 1], [r, 1]] rho = b.
    """
    n, x0s, out = len(sigmas) - 1, [], []
    prev_x, prev_order = None, 0

    def coefs(s: float, t: float):
        h = log_snr(t) - log_snr(s) if t > 0 else math.inf
        hh = -h
        e = math.exp(hh)
        return h, (1 - t), e - 1  # h, alpha_t, (e^hh - 1) which is both h*phi_1 and B(h)

    for i in range(n):
        v = velocity(i, x)
        x0 = x - sigmas[i] * v
        if i > 0:  # UniC on the step sigmas[i-1] -> sigmas[i]
            s, t = sigmas[i - 1], sigmas[i]
            h, a_t, em1 = coefs(s, t)
            hh = -h
            base = t / s * prev_x - a_t * em1 * x0s[-1]
            d_t = x0 - x0s[-1]
            if prev_order == 1:
                corr = 0.5 * d_t
            else:
                r = (log_snr(sigmas[i - 2]) - log_snr(s)) / h
                d1 = (x0s[-2] - x0s[-1]) / r
                g1 = (math.exp(hh) - 1 - hh) / hh
                g2 = (math.exp(hh) - 1 - hh - hh ** 2 / 2) / hh ** 2
                b1, b2 = g1 / em1, 2 * g2 / em1
                rho1 = (b1 - b2) / (1 - r)
                corr = rho1 * d1 + (b1 - rho1) * d_t
            x = base - a_t * em1 * corr
        x0s.append(x0)
        order = min(2, n - i, len(x0s))
        prev_x, prev_order = x, order
        s, t = sigmas[i], sigmas[i + 1]  # UniP on sigmas[i] -> sigmas[i+1]
        h, a_t, em1 = coefs(s, t)
        x = t / s * x - a_t * em1 * x0
        if order == 2:
            r = (log_snr(sigmas[i - 1]) - log_snr(s)) / h
            x = x - a_t * em1 * 0.5 * (x0s[-2] - x0) / r
        out.append(x)
    return out


def curved_velocity(i: int, x: torch.Tensor) -> torch.Tensor:
    """A smooth field whose x0 prediction changes from step to step, so every D term matters."""
    noise = randn(*x.shape, seed=99, dtype=torch.float64).to(x.dtype)
    return noise - 0.5 * torch.tanh(x) + 0.05 * i / 50


def test_unipc_trajectory_matches_float64_reference():
    """Covers order-1 and order-2 predictor and corrector steps and the final step."""
    steps = 12
    sched = make_scheduler("unipc", steps=steps, shift=5.0)
    sigmas = [float(s) for s in sched.sigmas]  # the float32 schedule, as float64 numbers
    x_start = randn(1, 3, 4, 5, seed=3, dtype=torch.float64)
    reference = unipc_bh2_reference(sigmas, curved_velocity, x_start)

    x = x_start.float()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(curved_velocity(i, x), t, x)
        torch.testing.assert_close(x.double(), reference[i], rtol=1e-6, atol=3e-6)


def test_unipc_reference_is_sensitive_to_the_corrector():
    """Guard for the test above: dropping the corrector moves the result far beyond its tolerance."""
    sched = make_scheduler("unipc", steps=12, shift=5.0)
    sigmas = [float(s) for s in sched.sigmas]
    x_start = randn(1, 3, 4, 5, seed=3, dtype=torch.float64)
    with_corrector = unipc_bh2_reference(sigmas, curved_velocity, x_start)[-1]
    x, x0_prev = x_start, None
    for i in range(12):  # plain 2-step multistep predictor, no corrector
        x0 = x - sigmas[i] * curved_velocity(i, x)
        h = log_snr(sigmas[i + 1]) - log_snr(sigmas[i]) if sigmas[i + 1] > 0 else math.inf
        a_t, em1 = 1 - sigmas[i + 1], math.exp(-h) - 1
        x_new = sigmas[i + 1] / sigmas[i] * x - a_t * em1 * x0
        if x0_prev is not None and i < 11:
            r = (log_snr(sigmas[i - 1]) - log_snr(sigmas[i])) / h
            x_new = x_new - a_t * em1 * 0.5 * (x0_prev - x0) / r
        x, x0_prev = x_new, x0
    assert (x - with_corrector).abs().max().item() > 1e-3


# ---------------------------------------------------------------- whole solves

@pytest.mark.parametrize("name", SOLVERS)
def test_straight_flow_lands_on_x0(name):
    """v = noise - x0 is the exact velocity of x_sigma = (1 - sigma) x0 + sigma noise: every solver is exact."""
    sched = make_scheduler(name, steps=20, shift=5.0)
    x0, noise = randn(1, 3, 8, seed=0), randn(1, 3, 8, seed=1)
    s0 = sched.sigmas[0].item()
    x = (1 - s0) * x0 + s0 * noise
    for t in sched.timesteps:
        x = sched.step(noise - x0, t, x)
    torch.testing.assert_close(x, x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, tolerance", [("unipc", 5e-3), ("dpm++", 5e-3), ("euler", 0.15)])
def test_gaussian_flow_converges_to_its_exact_endpoint(name, tolerance):
    """Data N(mu, s^2) per element: the ideal velocity field is curved, and its ODE carries a point at
    noise level sigma with standardised value z = (x - (1-sigma) mu) / sqrt((1-sigma)^2 s^2 + sigma^2)
    to mu + s z at sigma 0. 50 steps must land close (Euler is first order: loosely) and 4x closer
    than 10 steps. (The floor for the multistep solvers is their final jump to the x0 prediction.)"""
    mu, s = 1.0, 0.5

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        var = (1 - sigma) ** 2 * s ** 2 + sigma ** 2
        x0_mean = mu + (1 - sigma) * s ** 2 / var * (x - (1 - sigma) * mu)
        return (x - x0_mean) / sigma

    errors = []
    for steps in (10, 50):
        sched = make_scheduler(name, steps=steps, shift=5.0)
        s0 = min(sched.sigmas[0].item(), 1 - 1e-6)  # dpm++ starts at sigma 1 exactly
        x = randn(1, 4, 16, seed=5, dtype=torch.float64)
        exact = mu + s * (x - (1 - s0) * mu) / math.sqrt((1 - s0) ** 2 * s ** 2 + s0 ** 2)
        for i, t in enumerate(sched.timesteps):
            x = sched.step(velocity(x, max(sched.sigmas[i].item(), 1e-12)), t, x)
        errors.append((x - exact).abs().max().item())
    assert errors[1] < tolerance and errors[1] < errors[0] / 4


# ---------------------------------------------------------------- dtype, determinism, misuse

@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("shape", [(1, 48, 2, 4, 4), (1, 7, 20)])  # video [1, 48, F, h, w], audio [1, La, 20]
def test_bf16_in_bf16_out_and_deterministic(name, shape):
    def run() -> torch.Tensor:
        sched = make_scheduler(name, steps=5, shift=5.0)
        x = randn(*shape, seed=0, dtype=torch.bfloat16)
        for i, t in enumerate(sched.timesteps):
            x = sched.step(randn(*shape, seed=i + 1, dtype=torch.bfloat16), t, x)
            assert x.dtype == torch.bfloat16 and x.shape == shape
        return x

    assert torch.equal(run(), run())


def test_step_rejects_out_of_order_timesteps_and_extra_steps():
    sched = make_scheduler("unipc", steps=2)
    x = randn(1, 2, 3, seed=0)
    with pytest.raises(ValueError, match="expects timestep"):
        sched.step(x, sched.timesteps[1], x)
    x = sched.step(x, sched.timesteps[0], x)
    x = sched.step(x, sched.timesteps[1], x)
    with pytest.raises(RuntimeError, match="new scheduler"):
        sched.step(x, sched.timesteps[1], x)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown solver"):
        make_scheduler("ddim")
    with pytest.raises(UserError, match="steps"):
        make_scheduler("unipc", steps=0)
    with pytest.raises(UserError, match="shift"):
        make_scheduler("unipc", shift=0.0)


def test_euler_is_diffusers_flow_match_euler():
    """Upstream uses diffusers' scheduler for Euler; our wrapper must not change a bit of it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    theirs = FlowMatchEulerDiscreteScheduler(shift=5.0)
    theirs.set_timesteps(6, device="cpu")
    ours = make_scheduler("euler", steps=6, shift=5.0)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    x_ours = x_theirs = randn(1, 3, 5, seed=0, dtype=torch.bfloat16)
    for i, t in enumerate(theirs.timesteps):
        v = randn(1, 3, 5, seed=i + 1, dtype=torch.bfloat16)
        x_theirs = theirs.step(v, t, x_theirs, return_dict=False)[0]
        x_ours = ours.step(v, t, x_ours)
    assert torch.equal(x_ours, x_theirs)


# ---------------------------------------------------------------- upstream parity (needs the Ovi mirror)

def load_upstream_module(ovi_mirror, tmp_path: Path, repo_path: str):
    """Import one of upstream's files from the read-only mirror, copied to tmp_path at test time."""
    file = tmp_path / Path(repo_path).name
    file.write_text(ovi_mirror.show(repo_path))
    spec = importlib.util.spec_from_file_location(f"upstream_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_scheduler(ovi_mirror, tmp_path: Path, name: str, steps: int, shift: float):
    """Builds the scheduler and timesteps the way upstream's get_scheduler_time_steps does."""
    if name == "unipc":
        unipc = load_upstream_module(ovi_mirror, tmp_path, "ovi/utils/fm_solvers_unipc.py")
        sched = unipc.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        sched.set_timesteps(steps, device="cpu", shift=shift)
        return sched, sched.timesteps
    dpm = load_upstream_module(ovi_mirror, tmp_path, "ovi/utils/fm_solvers.py")
    sched = dpm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    timesteps, _ = dpm.retrieve_timesteps(sched, device="cpu", sigmas=dpm.get_sampling_sigmas(steps, shift))
    return sched, timesteps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name, steps, shift", [("unipc", 50, 5.0), ("unipc", 30, 5.0), ("unipc", 3, 2.0),
                                                ("dpm++", 50, 5.0),
                                                ("dpm++", 3, 2.0)])
def test_bit_identical_to_upstream(tmp_path, ovi_mirror, name, steps, shift, dtype):
    theirs, timesteps = upstream_scheduler(ovi_mirror, tmp_path, name, steps, shift)
    ours = make_scheduler(name, steps=steps, shift=shift)
    assert torch.equal(ours.timesteps, timesteps) and torch.equal(ours.sigmas, theirs.sigmas)

    x_ours = x_theirs = randn(1, 4, 3, 6, 6, seed=0, dtype=dtype)
    for t in timesteps:
        # the same state-dependent "model" on both trajectories, so any difference would compound
        v_theirs = curved_velocity(0, x_theirs.float()).to(dtype)
        v_ours = curved_velocity(0, x_ours.float()).to(dtype)
        x_theirs = theirs.step(v_theirs, t, x_theirs, return_dict=False)[0]
        x_ours = ours.step(v_ours, t, x_ours)
        assert x_ours.dtype == x_theirs.dtype == dtype
        assert torch.equal(x_ours, x_theirs), f"{name} differs from upstream at timestep {int(t)}"
