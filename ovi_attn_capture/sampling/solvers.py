"""Flow-matching samplers that step Ovi's two towers exactly as upstream does.

Ovi integrates the flow ODE from sigma ~ 1 (noise) to sigma = 0 (data), where
x_sigma = (1 - sigma) * x0 + sigma * noise and the model predicts the velocity
v = noise - x0, so x0 = x - sigma * v. Three solvers, as upstream's
`get_scheduler_time_steps` builds them:

- "unipc" (default): diffusers' UniPCMultistepScheduler (order 2, B(h) = e^h - 1 "bh2",
  x0 prediction, first-order final step) given upstream's own unshifted sigmas, which
  reproduces upstream's copy of that scheduler bit for bit (tested).
- "dpm++": DPM-Solver++ 2M (midpoint form) on the x0 prediction, first order at the
  first and last steps; schedule from a plain linspace(1, 0) shifted. This one stays
  ours: upstream's schedule starts at sigma = 1 exactly (timestep 1000, log-SNR -inf),
  which diffusers' DPMSolverMultistepScheduler cannot express (its set_timesteps takes no
  sigmas, and its flow sigmas start at 1 - 1e-6).
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

from ovi_attn_render.common.errors import UserError
from ovi_attn_capture.model.registry import SOLVERS  # the one list of solver names
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The timestep shift s*sigma / (1 + (s-1)*sigma) in float64, which spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


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


class DiffusersScheduler(FlowScheduler):
    """A diffusers scheduler behind our interface: `inner` does the arithmetic, we check the order of calls."""

    inner: object

    def _advance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        timestep = self.timesteps[self.step_index]
        return self.inner.step(model_output, timestep, sample, return_dict=False)[0]


class UniPCScheduler(DiffusersScheduler):
    """diffusers' UniPCMultistepScheduler set up to reproduce upstream's UniPC-2 (bh2, x0 form) bit for bit.

    Upstream ships its own copy of this scheduler; diffusers' default flow schedule differs from it
    (its unshifted sigmas start at 1.0), so we pass upstream's unshifted sigmas ourselves:
    linspace from the largest training sigma, float32(1 - 1/1000) (not the float64 0.999), to 0
    excluded; diffusers applies the shift in float64 and truncates sigma * 1000 to the timesteps,
    as upstream does. `lower_order_final` makes the final step first order, as upstream.
    """

    def __init__(self, steps: int, shift: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        from diffusers import UniPCMultistepScheduler  # only the capture side needs diffusers

        self.inner = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=2, solver_type="bh2", predict_x0=True,
            lower_order_final=True, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
        sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
        self.inner.set_timesteps(sigmas=np.linspace(sigma_max, 0.0, steps + 1)[:-1], device=device)
        self.timesteps, self.sigmas = self.inner.timesteps, self.inner.sigmas  # int64 [steps], float32 [steps + 1]


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


class EulerScheduler(DiffusersScheduler):
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
