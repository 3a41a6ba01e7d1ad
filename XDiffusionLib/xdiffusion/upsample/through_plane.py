"""`--method learned`: the B-spline upsampling, then a learned correction along the slice axis at the output's own
resolution.

What a thick-slice stack lacks is detail along its slice axis only: in-plane it is as fine as the output. Every plane
that contains the slice axis shows that loss as a blur along one of its two axes, at the output grid's resolution, so
one small 2D network (`ThroughPlaneNet`) reads such planes of the slab-projected B-spline volume, with where each row
lies in its slab and how thick the slabs are, and predicts what to add. It runs over both families of planes that
contain the slice axis (each plane's rows are the slice axis), the two corrections are averaged, and the caller's slab
projection then makes every slab's mean its input slice again. A network with ``context_planes`` K also reads the K
neighbouring planes of its family on each side (edges repeated): one plane alone cannot tell how a structure runs
across it. Training: `through_plane_training`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from monai.networks.nets import BasicUNet

from ..errors import ModelError

INPUT_CHANNELS = 3  # the B-spline plane (volume-normalised), each row's offset from its slab centre, the slab thickness;
# then the 2K neighbouring planes of a network with K context planes, nearest first (-1, +1, -2, +2, ...)
THICKNESS_SCALE = 8.0  # slab thickness in output voxels, divided by this: 2-8 voxel slabs map to 0.25-1
PAD_MULTIPLE = 16  # BasicUNet halves the grid four times
SCALE_PERCENTILE = 99.5  # a volume is divided by this percentile of its voxels: bright tissue near 1 in any units
# Where the B-spline is already background (below this share of the scale) nothing is added: the network's faint
# texture there only lowered SSIM (held-out SRI24 axial 5 mm: 0.952 with it, 0.979 without; B-spline 0.969).
BACKGROUND_LEVEL = 0.01
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "through_plane_model"


class ThroughPlaneNet(ModelMixin, ConfigMixin):
    """MONAI's BasicUNet in 2D behind diffusers' save/load (`save_pretrained` / `from_pretrained(local_dir)`):
    (B, 3 + 2K, rows along the slice axis, columns in-plane) -> (B, 1, rows, columns), the correction in normalised
    units; K = ``context_planes``."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, features: Sequence[int] = (16, 32, 64, 128, 256, 16), context_planes: int = 0) -> None:
        super().__init__()
        self.network = BasicUNet(spatial_dims=2, in_channels=INPUT_CHANNELS + 2 * int(context_planes), out_channels=1,
                                 features=tuple(int(f) for f in features))
        torch.nn.init.zeros_(self.network.final_conv.weight)  # a fresh network starts as the B-spline itself
        torch.nn.init.zeros_(self.network.final_conv.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        pad_h, pad_w = (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE
        padded = F.pad(inputs, (0, pad_w, 0, pad_h)) if pad_h or pad_w else inputs
        return self.network(padded)[..., :height, :width]


def intensity_scale(array: np.ndarray) -> float:
    """What the network's inputs are divided by (the same rule in training and at inference)."""
    scale = float(np.percentile(array, SCALE_PERCENTILE))
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def row_offsets(slab_positions: np.ndarray) -> np.ndarray:
    """Each output row's offset from the centre of the slab it lies in, in slabs (-1/2 to 1/2)."""
    return np.clip(slab_positions - np.round(slab_positions), -0.5, 0.5).astype(np.float32)


def context_steps(context_planes: int) -> list[int]:
    """Where a plane's neighbours lie, in planes, in channel order: nearest first, before after."""
    return [sign * distance for distance in range(1, context_planes + 1) for sign in (-1, 1)]


def neighbour_planes(planes: np.ndarray, indices: np.ndarray, context_planes: int) -> np.ndarray:
    """(len(indices), 2K, rows, columns): for each plane ``indices`` of the family ``planes`` (P, rows, columns), its
    neighbours at `context_steps`, the first or last plane standing in beyond the ends."""
    steps = np.asarray(context_steps(context_planes), dtype=np.int64)
    chosen = np.clip(np.asarray(indices, dtype=np.int64)[:, None] + steps[None, :], 0, planes.shape[0] - 1)
    return planes[chosen.ravel()].reshape(len(indices), len(steps), *planes.shape[1:])


def plane_inputs(planes: np.ndarray, offsets: np.ndarray, thickness_voxels: float,
                 neighbours: Optional[np.ndarray] = None) -> np.ndarray:
    """(P, rows, columns) normalised B-spline planes (and their (P, 2K, rows, columns) neighbours) -> (P, 3 + 2K,
    rows, columns) network inputs."""
    count, rows, columns = planes.shape
    offset_map = np.broadcast_to(offsets.astype(np.float32)[None, :, None], (count, rows, columns))
    thickness_map = np.full((count, rows, columns), thickness_voxels / THICKNESS_SCALE, np.float32)
    inputs = np.stack([planes.astype(np.float32), offset_map, thickness_map], axis=1)
    return inputs if neighbours is None else np.concatenate([inputs, neighbours.astype(np.float32)], axis=1)


def load_through_plane_net(folder: Optional[str | Path] = None, device: str = "cpu") -> ThroughPlaneNet:
    """The packaged weights, or a folder written by `save_pretrained`; a `ModelError` in one line if unusable."""
    folder = Path(folder) if folder is not None else PACKAGED_WEIGHTS
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} holds no through-plane network (no config.json)")
    try:
        net = ThroughPlaneNet.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"cannot load the through-plane network from {folder}: {str(error).splitlines()[0]}") from None
    return net.to(device).eval()


def weights_sha256(net: ThroughPlaneNet) -> str:
    """The weights' fingerprint for the sidecar: SHA-256 of the parameters as float16, in name order (the same for
    the float16 file and the float32 copy loaded from it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()


@torch.inference_mode()
def correct_planes(net: ThroughPlaneNet, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    """(P, 3, rows, columns) -> (P, rows, columns) corrections, ``batch`` planes at a time."""
    device = next(net.parameters()).device
    out = np.empty((inputs.shape[0], *inputs.shape[2:]), np.float32)
    for start in range(0, inputs.shape[0], batch):
        chunk = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch])).to(device)
        out[start:start + batch] = net(chunk)[:, 0].float().cpu().numpy()
    return out


def refine(prior: np.ndarray, axis: int, slab_positions: np.ndarray, thickness_voxels: float, net: ThroughPlaneNet,
           progress: Optional[Callable[[float], None]] = None, batch: int = 8) -> np.ndarray:
    """``prior`` (the slab-projected B-spline volume, slice axis ``axis``) plus the network's correction, averaged
    over the two families of planes containing the slice axis. ``slab_positions``: each output slice's centre in
    slab-index units (`slabs.slab_positions`). Voxels where the B-spline is background (`BACKGROUND_LEVEL`) are
    left as they are."""
    scale = intensity_scale(prior)
    normalised = (prior / scale).astype(np.float32)
    offsets = row_offsets(np.asarray(slab_positions, dtype=np.float64))
    in_plane = [a for a in range(3) if a != axis]
    context = int(getattr(net, "config", {}).get("context_planes", 0))  # a module without a config reads one plane
    correction = np.zeros(prior.shape, np.float32)
    for family, columns in enumerate(in_plane):
        stacking = in_plane[1 - family]
        planes = np.moveaxis(normalised, (stacking, axis, columns), (0, 1, 2))
        for start in range(0, planes.shape[0], batch):
            indices = np.arange(start, min(start + batch, planes.shape[0]))
            neighbours = neighbour_planes(planes, indices, context) if context else None
            chunk = plane_inputs(planes[start:start + batch], offsets, thickness_voxels, neighbours)
            corrected = correct_planes(net, chunk, batch)
            np.moveaxis(correction, (stacking, axis, columns), (0, 1, 2))[start:start + batch] += corrected
            if progress is not None:
                progress((family + (start + len(chunk)) / planes.shape[0]) / 2.0)
    correction[np.abs(normalised) < BACKGROUND_LEVEL] = 0.0
    return (prior + scale * correction / 2.0).astype(np.float32)
