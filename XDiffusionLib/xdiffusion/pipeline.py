"""`XDiffusionPipeline`: input slices in the canonical cube → an averaged multi-view volume with tumour and uncertainty.

For each of N view rotations every slice of the view is generated, all views and slices in one batch per solver step
(chunked to bound memory), guidance in the same batch; the views are realigned (R^T) and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from scipy import ndimage

from . import geometry
from .data.samples import conditioning_slots, sample_in_view
from .errors import Cancelled, InputError
from .model import XDiffusionModel, decode_latent, denoiser_forward, encode_target, load_model

SOLVERS = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddim": (DDIMScheduler, {}),
}
ProgressCallback = Callable[[float, str], Optional[bool]]


@dataclass
class CubeReconstruction:
    """The averaged result in the cube: model units ([-1, 1] image), tumour probabilities, spread across views."""

    image: np.ndarray  # (S, S, S)
    tumour_probability: np.ndarray  # (3, S, S, S), labels 1, 2, 3
    uncertainty: np.ndarray  # (S, S, S), std of the image across views, model units
    coverage: np.ndarray  # (S, S, S), views that covered each voxel
    unet_evaluations: int


def known_view_slices(slices: Sequence[geometry.CubeSlice], rotation: np.ndarray, side: int) -> dict[int, np.ndarray]:
    """View slice index → known image, for views that stack parallel to an input slice lying on a cube plane."""
    known = {}
    for cube_slice in slices:
        normal = np.zeros(3)
        normal[cube_slice.axis] = 1.0
        alignment = float(rotation[2] @ normal)
        coordinate = cube_slice.position * side / 2.0 + (side - 1) / 2.0
        if abs(abs(alignment) - 1.0) > 1e-9 or abs(coordinate - round(coordinate)) > 0.25:
            continue
        depth = int(round(np.sign(alignment) * (round(coordinate) - (side - 1) / 2.0) + (side - 1) / 2.0))
        points = geometry.view_sample_points(rotation, side)[:, :, :, depth]
        known[depth] = ndimage.map_coordinates(
            geometry.extrude_in_cube([cube_slice], side)[0], points, order=0, mode="nearest"
        ).astype(np.float32)
    return known


class XDiffusionPipeline:
    """One object, one `__call__`, loadable with `from_pretrained(local_dir)` (diffusers style)."""

    def __init__(self, model: XDiffusionModel, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model
        self.config = model.config
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> "XDiffusionPipeline":
        return cls(load_model(folder, device=device, dtype=dtype), device, dtype)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    def make_scheduler(self, solver: str):
        if solver not in SOLVERS:
            raise InputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        scheduler_class, options = SOLVERS[solver]
        return scheduler_class.from_config(self.model.scheduler_config, **options)

    def _conditioning(self, slices: Sequence[geometry.CubeSlice], rotations: np.ndarray, modality: int) -> dict[str, torch.Tensor]:
        """Per-slice conditioning for every view × depth, in the order (view, depth)."""
        side = self.config.cube_size
        extruded, distance = geometry.extrude_in_cube(slices, side)
        guesses, knowns = [], []
        for rotation in rotations:
            guess, known = sample_in_view(extruded, distance, geometry.view_sample_points(rotation, side))
            guesses.append(np.moveaxis(guess, -1, 0))
            knowns.append(np.moveaxis(known, -1, 0))
        count = len(rotations) * side
        slots = conditioning_slots(slices, side, self.config.max_inputs)
        depth = (np.arange(side) - (side - 1) / 2.0) / (side / 2.0)
        batch = {
            "inputs": np.broadcast_to(slots["inputs"], (count, *slots["inputs"].shape)),
            "input_present": np.broadcast_to(slots["input_present"], (count, self.config.max_inputs)),
            "input_plane": np.broadcast_to(slots["input_plane"], (count, self.config.max_inputs)),
            "input_position": np.broadcast_to(slots["input_position"], (count, self.config.max_inputs)),
            "guess": np.concatenate(guesses)[:, None],
            "known_distance": np.concatenate(knowns)[:, None],
            "rotation": np.repeat(rotations, side, axis=0),
            "depth": np.tile(depth, len(rotations)),
            "modality": np.full(count, modality),
        }
        return {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in batch.items()}

    def _predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: dict[str, torch.Tensor], guidance: float, chunk_size: int) -> torch.Tensor:
        outputs = []
        for start in range(0, latents.shape[0], chunk_size):
            chunk = {key: value[start:start + chunk_size].to(self.device) for key, value in conditioning.items()}
            noisy = latents[start:start + chunk_size].to(self.device, self.dtype)
            size = noisy.shape[0]
            if guidance == 1.0:
                outputs.append(denoiser_forward(self.model.unet, self.model.condition_encoder, noisy, timestep.expand(size), chunk).float())
                continue
            doubled = {key: torch.cat([value, value]) for key, value in chunk.items()}
            drop = torch.cat([torch.zeros(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)]).to(self.device)
            both = denoiser_forward(self.model.unet, self.model.condition_encoder, torch.cat([noisy, noisy]), timestep.expand(2 * size), doubled, drop).float()
            conditional, unconditional = both[:size], both[size:]
            outputs.append(unconditional + guidance * (conditional - unconditional))
        return torch.cat(outputs).cpu()

    def _encode_known(self, known_images: torch.Tensor, predicted_x0: torch.Tensor) -> torch.Tensor:
        """Known image channel + the model's own current tumour estimate, in the space the U-Net denoises."""
        if self.model.autoencoder is None:
            target = predicted_x0.clone()
            target[:, 0] = known_images
            return target
        with torch.no_grad():
            decoded = decode_latent(self.model.autoencoder, predicted_x0.to(self.device, self.dtype), self.config.latent_scale).float().cpu()
            decoded[:, 0] = known_images
            return encode_target(self.model.autoencoder, decoded.to(self.device, self.dtype), self.config.latent_scale).float().cpu()

    def _x0(self, scheduler, latents: torch.Tensor, output: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        alpha = scheduler.alphas_cumprod[int(timestep)].to(torch.float32)
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.config.prediction_type == "v_prediction":
            return a * latents - s * output
        return (latents - s * output) / a

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
        chunk_size: int = 256,
        data_consistency: bool = True,
        progress: Optional[ProgressCallback] = None,
    ) -> CubeReconstruction:
        """Generate the cube from input slices already placed in it (``geometry.slice_to_cube``, normalised)."""
        if not slices:
            raise InputError("at least one input slice is needed")
        if modality not in self.config.modalities:
            raise InputError(f"modality {modality!r} is not known to this model (it knows {', '.join(self.config.modalities)})")
        if steps < 1 or views < 1 or chunk_size < 1:
            raise InputError("steps, views and chunk size must be at least 1")
        side, size = self.config.cube_size, self.config.unet_size
        rotations = geometry.view_rotations(views)
        conditioning = self._conditioning(slices, rotations, self.config.modalities.index(modality))
        known = [known_view_slices(slices, rotation, side) if data_consistency else {} for rotation in rotations]
        known_rows = [v * side + depth for v, view_known in enumerate(known) for depth in view_known]
        known_images = torch.from_numpy(np.stack([view_known[d] for view_known in known for d in view_known])) if known_rows else None

        decoded, evaluations = self.generate_slices(conditioning, steps, guidance, seed, solver, chunk_size, known_rows, known_images, progress)
        volumes = [np.ascontiguousarray(np.moveaxis(view, 0, -1)) for view in decoded.numpy().reshape(views, side, -1, side, side)]
        self._report(progress, 0.95, "averaging views")
        mean, spread, coverage = geometry.realign_and_average(volumes, rotations)  # views are (C, S, S, depth)
        probability = np.clip((mean[1:] + 1.0) / 2.0, 0.0, 1.0)
        return CubeReconstruction(mean[0], probability, spread[0], coverage, evaluations)

    @torch.inference_mode()
    def generate_slices(
        self,
        conditioning: dict[str, torch.Tensor],
        steps: int,
        guidance: float = 1.0,
        seed: int = 0,
        solver: str = "dpmsolver++",
        chunk_size: int = 256,
        known_rows: Sequence[int] = (),
        known_images: Optional[torch.Tensor] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> tuple[torch.Tensor, int]:
        """Denoise a batch of independent target slices (all sharing each solver step) and decode them.

        Returns (B, 4, S, S) in model units (image, then tumour channels) and the number of U-Net evaluations.
        """
        count, size = conditioning["depth"].shape[0], self.config.unet_size
        scheduler = self.make_scheduler(solver)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(int(seed))
        latents = torch.randn((count, self.config.target_channels, size, size), generator=generator) * scheduler.init_noise_sigma
        known_rows = list(known_rows)
        evaluations = 0
        for number, timestep in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            output = self._predict(model_input, timestep.reshape(1), conditioning, guidance, chunk_size)
            evaluations += count * (1 if guidance == 1.0 else 2)
            if known_rows:
                clean = self._encode_known(known_images, self._x0(scheduler, latents, output, timestep)[known_rows])
            latents = scheduler.step(output, timestep, latents).prev_sample
            if known_rows:
                following = scheduler.timesteps[number + 1] if number + 1 < len(scheduler.timesteps) else None
                noise = torch.randn(clean.shape, generator=generator)
                latents[known_rows] = clean if following is None else scheduler.add_noise(clean, noise, following.reshape(1))
            self._report(progress, 0.9 * (number + 1) / steps, f"step {number + 1}/{steps}")
        return self._decode(latents, chunk_size), evaluations

    def _decode(self, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
        if self.model.autoencoder is None:
            return latents.clamp(-1.0, 2.0)
        parts = [decode_latent(self.model.autoencoder, latents[i:i + chunk_size].to(self.device, self.dtype), self.config.latent_scale).float().cpu()
                 for i in range(0, latents.shape[0], chunk_size)]
        return torch.cat(parts).clamp(-1.0, 2.0)

    @staticmethod
    def _report(progress: Optional[ProgressCallback], fraction: float, stage: str) -> None:
        if progress is not None and progress(fraction, stage) is False:
            raise Cancelled("cancelled by the progress callback")
