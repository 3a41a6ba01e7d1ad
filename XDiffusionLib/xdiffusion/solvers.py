"""The solvers a run may use, each built from the model's training schedule, and the clean estimate they imply.

Multistep solvers give no `pred_original_sample`, so the clean estimate x0 of a step (data consistency, coherent
fusion) and its inverse come from the schedule itself: x_t = a x0 + s eps, with a² + s² = 1.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UniPCMultistepScheduler

from .errors import InputError

SOLVERS = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddim": (DDIMScheduler, {}),
}


def make_solver(schedule: SchedulerMixin, solver: str, latent: bool) -> SchedulerMixin:
    """``solver`` over the training ``schedule``'s noise levels (`from_config`: the sampling loop never knows which)."""
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    scheduler_class, options = SOLVERS[solver]
    if latent:  # latents are not bounded to ±1: clipping them (diffusers' DDIM default) ruins the sample
        options = {**options, "clip_sample": False}
    return scheduler_class.from_config(schedule.config, **options)


def clean_estimate(scheduler: SchedulerMixin, latents: torch.Tensor, output: torch.Tensor, timestep: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """The clean estimate x0 the solver derives from the model output at ``timestep``."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(torch.float32)
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return a * latents - s * output
    return (latents - s * output) / a


def model_output_for(scheduler: SchedulerMixin, latents: torch.Tensor, x0: torch.Tensor, timestep: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """Inverse of `clean_estimate`: the model output whose clean estimate at ``timestep`` is ``x0``:
    eps = (x_t - a x0) / s, and v = a eps - s x0 = (a x_t - x0) / s."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(torch.float32)
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return (a * latents - x0) / s
    return (latents - a * x0) / s
