"""`XDiffusionPipeline`: input slices in the canonical cube → an averaged multi-view volume with tumour and uncertainty.

For each of N view rotations every slice of the view is generated, all views and slices in one batch per solver step
(chunked to bound memory), guidance in the same batch; the views are realigned (R^T) and averaged.

Coherent sampling (``coherent=True``): at every solver step each view's predicted clean slices are decoded, brought
into the shared cube and fused (`coherent.ViewFusion`), and every view continues from the fused estimate re-cut along it, so
one coherent volume comes out. ``samples=N`` runs N samples (seeds derived from ``seed``) and averages them into a
posterior mean whose spread across the samples is the uncertainty map.

Memory (`memory.py`): the chunk size (slices per U-Net call) is chosen from the free memory (GPU) or capped (CPU)
unless given; an out-of-memory error halves it and retries, saying so through the progress callback. On the CPU the
whole run's memory is estimated first and a run that cannot fit is refused with the figures (`InputError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel

from . import compute, geometry, memory
from .coherent import ViewFusion, known_cube_planes, view_slices, view_volumes
from .model_space import known_view_slices, view_conditioning
from .errors import Cancelled, InputError
from .memory import MemoryEstimate
from .solvers import clean_estimate, make_solver, model_output_for
from .model import ConditionEncoder, XDiffusionConfig, XDiffusionModel, decode_latent, denoiser_forward, encode_target, load_model

ProgressCallback = Callable[[float, str], Optional[bool]]


@dataclass
class CubeReconstruction:
    """The averaged result in the cube: model units ([-1, 1] image), tumour probabilities, and the uncertainty: the
    spread across views with one sample (for a coherent sample, of the views' own clean estimates at the last step,
    before they were fused), the spread across the samples with several (`uncertainty_across` says which)."""

    image: np.ndarray  # (S, S, S)
    tumour_probability: Optional[np.ndarray]  # (3, S, S, S), labels 1, 2, 3; None where the denoiser draws no labels
    uncertainty: np.ndarray  # (S, S, S), std of the image across views or samples, model units
    coverage: np.ndarray  # (S, S, S), views that covered each voxel
    unet_evaluations: int
    uncertainty_across: str = "views"  # "views" or "samples"


def sample_seed(seed: int, number: int) -> int:
    """The seed of sample ``number`` of a run seeded ``seed``: sample 0 uses ``seed`` itself (one sample is exactly the
    single-sample run), the others independent streams derived from (seed, number)."""
    if number == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")


class XDiffusionPipeline(DiffusionPipeline):
    """A diffusers pipeline with one `__call__`: the U-Net, condition encoder, scheduler (the training schedule; each run
    builds its solver from its config, `make_scheduler`), the autoencoder (`vae`, latent models) and the tumour label
    net (`label_net`, where the model has one) are registered components, so `device`, `dtype`, `to()` and
    `components` are diffusers' own; `to()` also sets up the device the components land on (CUDA: autotuning, TF32,
    channels-last weights; CPU: the thread limit).

    The model's `XDiffusionConfig` is `model_config` and its card `model_card`: `config` is diffusers' frozen record of
    the components. `from_pretrained(local_dir)` is ours, not diffusers': it loads through `model.load_model`, which
    checks every weights file against the SHA-256 in the card before any weight is read."""

    _optional_components = ["vae", "label_net"]

    def __init__(self, unet: UNet2DConditionModel, condition_encoder: ConditionEncoder, scheduler: SchedulerMixin,
                 vae: Optional[AutoencoderKL] = None, label_net: Optional[torch.nn.Module] = None,
                 model_config: Optional[XDiffusionConfig] = None, model_card: Optional[dict[str, Any]] = None,
                 compile: Optional[bool] = None):
        super().__init__()
        if model_config is None:  # a keyword only because diffusers takes every required argument for a component
            raise ValueError("XDiffusionPipeline needs the model's XDiffusionConfig (model_config)")
        self.register_modules(unet=unet, condition_encoder=condition_encoder, scheduler=scheduler, vae=vae, label_net=label_net)
        self.model_config = model_config
        self.model_card = dict(model_card or {})
        self._compile = os.environ.get("XDIFFUSION_COMPILE", "") == "1" if compile is None else compile
        self._calls = memory.ChunkedCalls(memory.CPU_CHUNK)
        self._fraction = 0.0
        self._prepare_device()

    @classmethod
    def from_model(cls, model: XDiffusionModel, compile: Optional[bool] = None) -> "XDiffusionPipeline":
        """The pipeline over a loaded (or training) model's parts, on the device they are on."""
        return cls(model.unet, model.condition_encoder, DDPMScheduler.from_config(model.scheduler_config), model.autoencoder,
                   model.label_net, model_config=model.config, model_card=model.model_card, compile=compile)

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                        compile: Optional[bool] = None) -> "XDiffusionPipeline":
        """A saved model folder (`model.save_model`), every weights file checked against its card before it is read."""
        return cls.from_model(load_model(folder, device=device, dtype=dtype), compile)

    def to(self, *args, **kwargs) -> "XDiffusionPipeline":
        """diffusers' move of every component, then the set-up of the device they are now on."""
        super().to(*args, **kwargs)
        self._prepare_device()
        return self

    def _prepare_device(self) -> None:
        """GPU (unmeasured here, no GPU on the build machine): cuDNN autotuning, TF32, channels-last weights
        (convolutions in NHWC run on tensor cores without transposes), and optionally `torch.compile` of the U-Net
        (worth its minute of compilation only for cohorts: set XDIFFUSION_COMPILE=1 or `compile=True`). CPU: torch's
        threads limited to the usable cores."""
        self._unet_call = None
        if self.device.type != "cuda":
            compute.limit_threads()
            return
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.unet.to(memory_format=torch.channels_last)
        if self.vae is not None:
            self.vae.to(memory_format=torch.channels_last)
        if self._compile:
            self._unet_call = torch.compile(self.unet, dynamic=True)

    # --- memory (memory.py) ------------------------------------------------------------------------------------

    def estimate_memory(self, count: int, guidance: float = 1.0, views: int = 0) -> MemoryEstimate:
        """Peak bytes of sampling ``count`` slices (``views`` whole views when averaged afterwards)."""
        return memory.estimate_memory(self.model_config, self.unet, self.condition_encoder, self.vae, self.dtype, count, guidance, views)

    def choose_chunk_size(self, estimate: MemoryEstimate, count: int, requested: Optional[int] = None) -> int:
        """Slices per network call: ``requested`` if given, else what fits the free GPU memory, else CPU_CHUNK."""
        return memory.choose_chunk_size(self.device, estimate, count, requested)

    def check_host_memory(self, estimate: MemoryEstimate, chunk_size: int, available: Optional[int] = None) -> int:
        """On the CPU: the chunk size that fits the available memory, or an InputError saying what the run needs."""
        return memory.check_host_memory(self.device, estimate, chunk_size, available)

    def _chunked(self, count: int, function: Callable[[int, int], torch.Tensor], progress: Optional[ProgressCallback]) -> torch.Tensor:
        """``function(start, stop)`` over [0, count) in chunks; an out-of-memory error halves the chunk for the rest
        of the run and retries the same rows, saying so through ``progress``."""
        return self._calls(count, function, lambda stage: self._report(progress, self._fraction, stage))

    @property
    def modalities(self) -> list[str]:
        return list(self.model_config.modalities)

    def make_scheduler(self, solver: str) -> SchedulerMixin:
        return make_solver(self.scheduler, solver, self.model_config.latent)

    def _conditioning(self, slices: Sequence[geometry.CubeSlice], rotations: np.ndarray, modality: int,
                      input_label_maps: Optional[Sequence[np.ndarray]] = None,
                      slab_thickness: Optional[float] = None, atlas: Optional[np.ndarray] = None) -> dict[str, torch.Tensor]:
        """Per-slice conditioning for every view × depth, in the order (view, depth) (`model_space.view_conditioning`);
        the input slots are one copy, viewed per slice."""
        shared, batch = view_conditioning(slices, rotations, modality, self.model_config, input_label_maps, slab_thickness, atlas)
        count = len(rotations) * self.model_config.cube_size
        shared = {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))[None] for key, value in shared.items()}
        tensors = {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in batch.items()}
        return {**{key: value.expand(count, *value.shape[1:]) for key, value in shared.items()}, **tensors}

    def _predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: dict[str, torch.Tensor], guidance: float,
                 progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        unet = self._unet_call or self.unet
        channels_last = self.device.type == "cuda"
        timestep = timestep.to(self.device)  # diffusers embeds a 1-D timestep on the device it is on

        def run(start: int, stop: int) -> torch.Tensor:
            chunk = {key: value[start:stop].to(self.device) for key, value in conditioning.items()}
            noisy = latents[start:stop].to(self.device, self.dtype)
            if channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            size = noisy.shape[0]
            if guidance == 1.0:
                return denoiser_forward(unet, self.condition_encoder, noisy, timestep.expand(size), chunk).float().cpu()
            doubled = {key: torch.cat([value, value]) for key, value in chunk.items()}
            drop = torch.cat([torch.zeros(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)]).to(self.device)
            both = denoiser_forward(unet, self.condition_encoder, torch.cat([noisy, noisy]), timestep.expand(2 * size), doubled, drop).float()
            conditional, unconditional = both[:size], both[size:]
            return (unconditional + guidance * (conditional - unconditional)).cpu()

        return self._chunked(latents.shape[0], run, progress)

    def _encode_known(self, known_images: torch.Tensor, predicted_x0: torch.Tensor, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Known image channel + the model's own current tumour estimate, in the space the U-Net denoises."""
        if self.vae is None:
            target = predicted_x0.clone()
            target[:, 0] = known_images
            return target

        def run(start: int, stop: int) -> torch.Tensor:
            decoded = decode_latent(self.vae, self._to_device(predicted_x0[start:stop]), self.model_config.latent_scale).float().cpu()
            decoded[:, 0] = known_images[start:stop]
            return encode_target(self.vae, self._to_device(decoded), self.model_config.latent_scale).float().cpu()

        return self._chunked(predicted_x0.shape[0], run, progress)

    @torch.inference_mode()
    def __call__(
        self,
        slices: Sequence[geometry.CubeSlice],
        modality: str,
        views: int = 4,
        steps: int = 12,
        guidance: float = 1.0,
        seed: int = 0,
        solver: str = "dpmsolver++",
        chunk_size: Optional[int] = None,
        data_consistency: bool = True,
        progress: Optional[ProgressCallback] = None,
        strength: float = 1.0,
        prior: Optional[np.ndarray] = None,
        coherent: bool = False,
        samples: int = 1,
        input_label_maps: Optional[Sequence[np.ndarray]] = None,
        slab_thickness: Optional[float] = None,
        atlas: Optional[np.ndarray] = None,
        fusion: str = "mean",
    ) -> CubeReconstruction:
        """Generate the cube from input slices already placed in it (``geometry.slice_to_cube``, normalised).

        ``strength`` < 1 starts every slice from a noised prior (SDEdit) rather than from pure noise: ``prior``, a
        whole (S, S, S) cube in model units (e.g. a registered atlas), else the extrude prior.

        ``coherent`` fuses the views at every solver step (`ViewFusion`): one coherent volume rather than an average
        of independent ones. ``samples`` > 1 averages that many samples (sample 0 seeded ``seed``, `sample_seed`)
        into a posterior mean, and the uncertainty becomes their spread. ``fusion`` is how the finished views are
        fused without ``coherent`` (`geometry.realign_and_average`: ``mean``, or ``in-plane``, each spatial frequency
        from the views whose slices contain it); the uncertainty is the views' spread about their mean either way.

        ``input_label_maps``, ``slab_thickness`` and ``atlas`` (the atlas registered to the inputs, an S³ cube in model
        units) reach label-, slab- and atlas-conditioned models (`_conditioning`); other models refuse an atlas."""
        if not slices:
            raise InputError("at least one input slice is needed")
        if modality not in self.model_config.modalities:
            raise InputError(f"modality {modality!r} is not known to this model (it knows {', '.join(self.model_config.modalities)})")
        if steps < 1 or views < 1 or samples < 1 or (chunk_size is not None and chunk_size < 1):
            raise InputError("steps, views, samples and chunk size must be at least 1")
        geometry.check_fusion(fusion)  # before minutes of sampling, not after
        side = self.model_config.cube_size
        if atlas is not None and (not self.model_config.atlas_conditioning or atlas.shape != (side,) * 3 or not np.isfinite(atlas).all()):
            raise InputError(f"an atlas to condition on needs an atlas-conditioned model and a finite {side}^3 cube "
                             f"(this model is {'' if self.model_config.atlas_conditioning else 'not '}atlas-conditioned; "
                             f"the atlas has shape {atlas.shape})")
        estimate = self.estimate_memory(views * side, guidance, views)
        chunk_size = self.check_host_memory(estimate, self.choose_chunk_size(estimate, views * side, chunk_size))
        rotations = geometry.view_rotations(views)
        conditioning = self._conditioning(slices, rotations, self.model_config.modalities.index(modality), input_label_maps,
                                          slab_thickness, atlas)
        known = [known_view_slices(slices, rotation, side) if data_consistency else {} for rotation in rotations]
        known_rows = [v * side + depth for v, view_known in enumerate(known) for depth in view_known]
        known_images = torch.from_numpy(np.stack([view_known[d] for view_known in known for d in view_known])) if known_rows else None

        if prior is not None:
            if prior.shape != (side,) * 3 or not np.isfinite(prior).all():
                raise InputError(f"the prior must be a finite {side}^3 cube, got shape {prior.shape}")
            prior = torch.from_numpy(view_slices(prior, rotations)[:, None])
        planes = known_cube_planes(slices, side) if data_consistency else []
        total = total_squares = None
        evaluations = 0
        for number in range(samples):
            sample_progress = progress if samples == 1 else self._sample_progress(progress, number, samples)
            step_fusion = ViewFusion(rotations, partial(self._decode, progress=sample_progress), partial(self._encode, progress=sample_progress),
                                     planes) if coherent else None
            generated, count = self.generate_slices(conditioning, steps, guidance, sample_seed(seed, number), solver, chunk_size,
                                                    known_rows, known_images, sample_progress, strength, prior, step_fusion,
                                                    decode=step_fusion is None)
            evaluations += count
            if step_fusion is not None:  # the last fused estimate is the sample; the views' spread just before that fusion
                mean, spread, coverage = np.clip(step_fusion.fused, -1.0, 2.0), step_fusion.spread[None], step_fusion.coverage
            else:
                self._report(sample_progress, 0.95, "fusing views")
                mean, spread, coverage = geometry.realign_and_average(view_volumes(generated.numpy(), views), rotations, fusion)
            total = mean.astype(np.float64) if total is None else total + mean
            squares = mean[0].astype(np.float64) ** 2
            total_squares = squares if total_squares is None else total_squares + squares
        mean = (total / samples).astype(np.float32)
        if samples > 1:
            spread = np.sqrt(np.maximum(total_squares / samples - mean[0].astype(np.float64) ** 2, 0.0)).astype(np.float32)[None]
        probability = np.clip((mean[1:] + 1.0) / 2.0, 0.0, 1.0) if self.model_config.tumour_in_target else None
        return CubeReconstruction(mean[0], probability, spread[0], coverage, evaluations, "samples" if samples > 1 else "views")

    @staticmethod
    def _sample_progress(progress: Optional[ProgressCallback], number: int, samples: int) -> Optional[ProgressCallback]:
        """Sample ``number``'s progress as its share of the whole run; a cancel still cancels."""
        if progress is None:
            return None
        return lambda fraction, stage: progress((number + fraction) / samples, f"sample {number + 1}/{samples}: {stage}")

    @torch.inference_mode()
    def generate_slices(
        self,
        conditioning: dict[str, torch.Tensor],
        steps: int,
        guidance: float = 1.0,
        seed: int = 0,
        solver: str = "dpmsolver++",
        chunk_size: Optional[int] = None,
        known_rows: Sequence[int] = (),
        known_images: Optional[torch.Tensor] = None,
        progress: Optional[ProgressCallback] = None,
        strength: float = 1.0,
        prior_images: Optional[torch.Tensor] = None,
        fuse: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        decode: bool = True,
    ) -> tuple[torch.Tensor, int]:
        """Denoise a batch of target slices (all sharing each solver step) and decode them.

        ``strength`` < 1 starts from ``prior_images`` (B, 1, S, S) (else the extrude prior ``conditioning["guess"]``)
        noised to that fraction of the schedule (SDEdit) instead of pure noise: fewer steps run, and the sample stays
        closer to the prior.

        ``fuse`` (e.g. `ViewFusion`) maps every step's predicted clean batch to the one the solver continues from: it
        is turned back into the model output the scheduler expects (`solvers.model_output_for`), so any solver uses it. Without
        it the slices are independent samples.

        Returns (B, 4, S, S) in model units (image, then tumour channels), or the final latents when not ``decode``,
        and the number of U-Net evaluations.
        ``chunk_size`` (slices per network call) defaults to what fits (see ``choose_chunk_size``).
        """
        count, size = conditioning["depth"].shape[0], self.model_config.unet_size
        if chunk_size is None:
            chunk_size = self.choose_chunk_size(self.estimate_memory(count, guidance), count)
        self._calls, self._fraction = memory.ChunkedCalls(chunk_size), 0.0
        scheduler = self.make_scheduler(solver)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(int(seed))
        latents = torch.randn((count, self.model_config.target_channels, size, size), generator=generator) * scheduler.init_noise_sigma
        check_strength(strength)
        timesteps = scheduler.timesteps
        if strength < 1.0:
            start = min(len(timesteps) - 1, int(round((1.0 - strength) * len(timesteps))))
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            timesteps = timesteps[start:]
            start_image = prior_images if prior_images is not None else conditioning["guess"]
            latents = scheduler.add_noise(self._encode_prior(start_image, chunk_size), latents, timesteps[:1])
        steps = len(timesteps)
        known_rows, kind = list(known_rows), self.model_config.prediction_type
        evaluations = 0
        for number, timestep in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            output = self._predict(model_input, timestep.reshape(1), conditioning, guidance, progress)
            evaluations += count * (1 if guidance == 1.0 else 2)
            if fuse is not None:
                output = model_output_for(scheduler, latents, fuse(clean_estimate(scheduler, latents, output, timestep, kind)), timestep, kind)
            if known_rows:
                clean = self._encode_known(known_images, clean_estimate(scheduler, latents, output, timestep, kind)[known_rows], progress)
            latents = scheduler.step(output, timestep, latents).prev_sample
            if known_rows:
                following = timesteps[number + 1] if number + 1 < len(timesteps) else None
                noise = torch.randn(clean.shape, generator=generator)
                latents[known_rows] = clean if following is None else scheduler.add_noise(clean, noise, following.reshape(1))
            self._fraction = 0.9 * (number + 1) / steps
            self._report(progress, self._fraction, f"step {number + 1}/{steps}")
        return (self._decode(latents, progress) if decode else latents), evaluations

    def _encode_prior(self, guess: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """A prior image as a clean target (no tumour), in the space the U-Net denoises."""
        no_tumour = -torch.ones(guess.shape[0], self.model_config.image_channels - 1, *guess.shape[2:])
        target = torch.cat([guess, no_tumour], dim=1).float()
        if self.vae is None:
            return target
        with torch.no_grad():
            return torch.cat([encode_target(self.vae, target[i:i + chunk_size].to(self.device, self.dtype), self.model_config.latent_scale).float().cpu()
                              for i in range(0, target.shape[0], chunk_size)])

    def _encode(self, targets: torch.Tensor, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """(B, 4, S, S) images in model units → the space the U-Net denoises (the inverse of `_decode`)."""
        if self.vae is None:
            return targets.float()

        def run(start: int, stop: int) -> torch.Tensor:
            return encode_target(self.vae, self._to_device(targets[start:stop]), self.model_config.latent_scale).float().cpu()

        return self._chunked(targets.shape[0], run, progress)

    def _decode(self, latents: torch.Tensor, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1.0, 2.0)

        def run(start: int, stop: int) -> torch.Tensor:
            return decode_latent(self.vae, self._to_device(latents[start:stop]), self.model_config.latent_scale).float().cpu()

        return self._chunked(latents.shape[0], run, progress).clamp(-1.0, 2.0)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.to(self.device, self.dtype)
        return moved.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" and moved.ndim == 4 else moved

    @staticmethod
    def _report(progress: Optional[ProgressCallback], fraction: float, stage: str) -> None:
        if progress is not None and progress(fraction, stage) is False:
            raise Cancelled("cancelled by the progress callback")
