"""Flow-matching samplers that step Ovi's two towers exactly as upstream does.

Ovi integrates the flow ODE from sigma ~ 1 (noise) to sigma = 0 (data), where
x_sigma = (1 - sigma) * x0 + sigma * noise and the model predicts the velocity
v = noise - x0, so x0 = x - sigma * v. Three solvers, as upstream's
`get_scheduler_time_steps` builds them:

- "unipc" (default): UniPC, order 2, B(h) = e^h - 1 ("bh2"), on the x0 prediction, with
  a first-order final step. Upstream ships its own scheduler for it; diffusers'
  UniPCMultistepScheduler gives a different schedule (its unshifted sigmas start at 1.0,
  upstream's at 0.999), so we write it here from the formulas.
- "dpm++": DPM-Solver++ 2M (midpoint form) on the x0 prediction, first order at the
  first and last steps; schedule from a plain linspace(1, 0) shifted.
- "euler": diffusers' FlowMatchEulerDiscreteScheduler, used as is (upstream's choice).

Notation: alpha = 1 - sigma, lambda = log(alpha) - log(sigma) (the log-SNR),
h = lambda_next - lambda_now > 0.

Bit-faithfulness. Upstream keeps the sigmas as 0-dim float32 CPU tensors and multiplies
them into the (bf16) latents, so every product is rounded to the latent dtype right where
upstream rounds it; the device placement matters too (a CPU scalar and a 0-dim CUDA
tensor are rounded differently by CUDA kernels). The code below therefore uses the same
torch operations, in the same order and on the same devices as upstream; the comments
marked "as upstream" keep the odd-looking ones from being "simplified".

One scheduler per tower and per generation: the multistep solvers remember past x0
predictions. `step` must be called with the schedule's timesteps in order.
"""

from __future__ import annotations

import numpy as np
import torch

from ovi_attn_render.errors import UserError

SOLVERS = ("unipc", "euler", "dpm++")
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The timestep shift s*sigma / (1 + (s-1)*sigma) in float64, which spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unipc_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream UniPC's schedule: timesteps int64 [steps], sigmas float32 [steps + 1] ending in 0.

    The unshifted sigmas run linearly from the largest training sigma, float32(1 - 1/1000)
    = 0.999, down to 0 (excluded); timesteps truncate sigma * 1000 toward zero.
    """
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    sigmas = shift_sigmas(np.linspace(sigma_max, 0.0, steps + 1)[:-1], shift)  # float64 [steps]
    return _to_schedule(sigmas)


def dpmpp_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream DPM++'s schedule (`get_sampling_sigmas`): linspace(1, 0) without its last point, shifted.

    Unlike UniPC's it starts at sigma = 1 exactly, so the first timestep is 1000.
    """
    sigmas = shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)  # float64 [steps]
    return _to_schedule(sigmas)


def _to_schedule(sigmas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 sigmas [steps] -> (timesteps int64 [steps], sigmas float32 [steps + 1] with a final 0)."""
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)  # truncation, as upstream
    with_zero = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return timesteps, torch.from_numpy(with_zero)


def log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma) for a 0-dim float32 sigma (+inf at sigma 0, -inf at sigma 1)."""
    alpha = 1 - sigma
    return torch.log(alpha) - torch.log(sigma)


class FlowScheduler:
    """Steps one tower's latent through a fixed schedule; one instance per tower, per generation.

    timesteps: [steps], what the model gets as t (int64; float32 for "euler", as upstream).
    sigmas: float32 [steps + 1], the noise level before each step, last entry 0.
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    def __init__(self) -> None:
        self.step_index = 0  # how many steps have been taken

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor) -> torch.Tensor:
        """One solver step: the model's velocity at `sample` (noise level of `timestep`) -> the next sample.

        model_output, sample: [B, C, ...] (any shape with a leading batch dim and at least 2 dims).
        Returns the next sample with sample's shape and model_output's dtype (they match in Ovi).
        """
        self._check_timestep(timestep)
        next_sample = self._advance(model_output, sample)
        self.step_index += 1
        return next_sample

    def _advance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_timestep(self, timestep: float | torch.Tensor) -> None:
        """Catch misuse (a shared or reused scheduler, skipped steps); upstream silently assumes the order."""
        if self.step_index >= self.num_steps:
            raise RuntimeError(f"all {self.num_steps} steps are done; make a new scheduler for each generation")
        expected = float(self.timesteps[self.step_index])
        if float(timestep) != expected:
            raise ValueError(f"step {self.step_index} expects timestep {expected:g}, got {float(timestep):g}; "
                             "call step once per timestep, in order, with one scheduler per tower")


class UniPCScheduler(FlowScheduler):
    """UniPC-2 (bh2) in x0 form: a corrector on the sample the model just saw, then a predictor.

    At step i the model has evaluated x_i (at sigmas[i]) giving x0_i. UniC refines x_i using
    x0_i, the predictor UniP then moves the refined x_i to sigmas[i+1]. The model is not
    rerun on the corrected sample: that is what makes UniPC free.
    """

    order = 2

    def __init__(self, steps: int, shift: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        timesteps, self.sigmas = unipc_schedule(steps, shift)  # sigmas stay on the CPU, as upstream
        self.timesteps = timesteps.to(device)
        self.x0_history: list[torch.Tensor] = []  # the last `order` x0 predictions, oldest first
        self.last_sample: torch.Tensor | None = None  # where the previous predictor started
        self.last_order = 0  # the previous predictor's order = the corrector's order now

    def _advance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        x0 = sample - self.sigmas[i] * model_output  # x0 from the sample the model saw
        if i > 0:
            sample = self._correct(x0)
        self.x0_history = (self.x0_history + [x0])[-self.order:]
        # Order ramps up 1, 2, 2, ... (needs history) and drops to 1 for the final step.
        order = min(self.order, self.num_steps - i, len(self.x0_history))
        self.last_sample, self.last_order = sample, order
        return self._predict(sample, order)

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-`order`: x at sigmas[i] -> sigmas[i+1] from x0_i (and x0_{i-1} when order is 2)."""
        i = self.step_index
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = log_snr(sigma_t) - log_snr(sigma_s0)
        hh = -h  # x0 form integrates in -h
        h_phi_1 = torch.expm1(hh)  # e^{-h} - 1
        B_h = torch.expm1(hh)  # bh2
        m0 = self.x0_history[-1]
        if order == 2:
            rk = (log_snr(self.sigmas[i - 1]) - log_snr(sigma_s0)) / h  # < 0: x0_{i-1} lies behind
            D1s = torch.stack([(self.x0_history[-2] - m0) / rk], dim=1)  # [B, 1, C, ...]
            rhos_p = torch.tensor([0.5], dtype=x.dtype, device=x.device)  # order 2 needs no solve
            pred_res = torch.einsum("k,bkc...->bc...", rhos_p, D1s)  # = 0.5 * D1, as upstream
        else:
            pred_res = 0
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0  # the first-order (DDIM) part
        x_t = x_t_ - alpha_t * B_h * pred_res
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor) -> torch.Tensor:
        """UniC: redo the last predictor step sigmas[i-1] -> sigmas[i], now also using x0_i (model_t).

        The predicted sample itself is not needed: only where that step started (last_sample).
        """
        i, order, x = self.step_index, self.last_order, self.last_sample
        sigma_t, sigma_s0 = self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lambda_s0 = log_snr(sigma_s0)
        h = log_snr(sigma_t) - lambda_s0
        hh = -h
        h_phi_1 = torch.expm1(hh)
        B_h = torch.expm1(hh)
        m0 = self.x0_history[-1]  # x0_{i-1}: the history does not hold x0_i yet
        if order == 1:
            rhos_c = torch.tensor([0.5], dtype=x.dtype, device=x.device)
            corr_res = 0
        else:
            rk = (log_snr(self.sigmas[i - 2]) - lambda_s0) / h
            D1s = torch.stack([(self.x0_history[-2] - m0) / rk], dim=1)  # [B, 1, C, ...]
            rhos_c = unic_weights(rk, h_phi_1, hh, B_h, x.device).to(x.dtype)
            corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], D1s)
        D1_t = model_t - m0
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        x_t = x_t_ - alpha_t * B_h * (corr_res + rhos_c[-1] * D1_t)
        return x_t.to(x.dtype)


def unic_weights(rk: torch.Tensor, h_phi_1: torch.Tensor, hh: torch.Tensor, B_h: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """UniC-2's weights rho [2]: solve [[1, 1], [rk, 1]] rho = b, in float32 on `device` as upstream.

    b_k = k! * g_k / B(h) with g_k = (e^hh - sum_{j<=k} hh^j / j!) / hh^k, the scaled Taylor
    remainder of e^hh, built by the recurrence g_1 = h_phi_1/hh - 1, g_{k+1} = g_k/hh - 1/(k+1)!.
    """
    h_phi_k = h_phi_1 / hh - 1
    b1 = h_phi_k * 1 / B_h
    h_phi_k = h_phi_k / hh - 1 / 2
    b2 = h_phi_k * 2 / B_h
    one = torch.ones((), dtype=rk.dtype)
    R = torch.stack([torch.stack([one, one]), torch.stack([rk, one])]).to(device)  # rows: rk^0, rk^1
    b = torch.stack([b1, b2]).to(device)
    return torch.linalg.solve(R, b)


class DPMSolverPPScheduler(FlowScheduler):
    """DPM-Solver++ 2M (midpoint) in x0 form; first order at the first step and at the final step.

    Like upstream, the update is computed with the sample in float32 and cast back at the end.
    """

    order = 2

    def __init__(self, steps: int, shift: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        timesteps, self.sigmas = dpmpp_schedule(steps, shift)  # sigmas on the CPU, as upstream
        self.timesteps = timesteps.to(device)
        self.x0_history: list[torch.Tensor] = []  # the last `order` x0 predictions, oldest first

    def _advance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        x0 = sample - self.sigmas[i] * model_output
        self.x0_history = (self.x0_history + [x0])[-self.order:]
        sample = sample.to(torch.float32)  # upcast, as upstream
        if len(self.x0_history) < 2 or i == self.num_steps - 1:
            next_sample = self._first_order(sample)
        else:
            next_sample = self._second_order(sample)
        return next_sample.to(x0.dtype)

    def _first_order(self, sample: torch.Tensor) -> torch.Tensor:
        """x_t = sigma_t/sigma_s * x - alpha_t (e^{-h} - 1) x0 (DDIM in flow form)."""
        i = self.step_index
        sigma_t, sigma_s = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = log_snr(sigma_t) - log_snr(sigma_s)
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * self.x0_history[-1]

    def _second_order(self, sample: torch.Tensor) -> torch.Tensor:
        """Adds the midpoint term -0.5 alpha_t (e^{-h} - 1) D1 with D1 = (x0_i - x0_{i-1}) / r0."""
        i = self.step_index
        sigma_t, sigma_s0, sigma_s1 = self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lambda_t, lambda_s0, lambda_s1 = log_snr(sigma_t), log_snr(sigma_s0), log_snr(sigma_s1)
        m0, m1 = self.x0_history[-1], self.x0_history[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h  # infinite at step 1 (sigma 1 has lambda -inf), making D1 zero, as upstream
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        return ((sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1)


class EulerScheduler(FlowScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler(shift=shift), exactly as upstream builds it.

    Its timesteps are float32 and not whole numbers; the shift is applied twice at the low
    end (once to the training sigmas that bound the linspace, once to the linspace), as upstream.
    """

    def __init__(self, steps: int, shift: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        from diffusers import FlowMatchEulerDiscreteScheduler  # only this solver needs diffusers

        self.inner = FlowMatchEulerDiscreteScheduler(shift=shift)
        self.inner.set_timesteps(steps, device=device)
        self.timesteps, self.sigmas = self.inner.timesteps, self.inner.sigmas

    def _advance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        timestep = self.timesteps[self.step_index]
        return self.inner.step(model_output, timestep, sample, return_dict=False)[0]


def make_scheduler(name: str, steps: int = 50, shift: float = 5.0,
                   device: torch.device | str = "cpu") -> FlowScheduler:
    """A fresh scheduler for one tower. `device` is where the latents live (timesteps go there)."""
    if name not in SOLVERS:
        raise UserError(f"unknown solver {name!r}; use one of {', '.join(SOLVERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"sample steps must be a whole number of at least 1, got {steps!r}; fix `steps`")
    if not shift > 0:
        raise UserError(f"the timestep shift must be positive, got {shift!r}; fix `shift`")
    kinds = {"unipc": UniPCScheduler, "euler": EulerScheduler, "dpm++": DPMSolverPPScheduler}
    return kinds[name](steps, float(shift), device)
