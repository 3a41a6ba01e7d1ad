"""The tumour label network: BraTS labels in pixel space, at the output grid's own resolution.

Labels do not go through the autoencoder (a plain-L1 autoencoder never drew a tumour pixel, and 3.75 mm cube voxels
lose small lesions): one small 2D network reads, for each output slice parallel to the input plane, the reconstructed
slice, its nearest input slice with that slice's labels, the signed distance between them, and the ellipsoid
baseline's guess on that plane (`label_baselines.ellipsoid_sections`: the shape prior it refines, in millimetres, so
that the same weights serve any grid spacing), and predicts the labels there. With no labels given (``labels_given``
0, distance 0, no guess) the same network segments the input slice itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from monai.networks.nets import BasicUNet

LABEL_CLASSES = 4  # background + BraTS 1 (necrotic core), 2 (oedema), 3 (enhancing)
INPUT_CHANNELS = 10  # reconstructed slice, nearest input slice, its 3 label maps, labels-given flag, signed distance,
# the ellipsoid guess's 3 label maps
DISTANCE_SCALE_MM = 16.0  # signed distance in units of 16 mm, clipped at +-4 (64 mm): lesions are smaller than that
PAD_MULTIPLE = 16  # BasicUNet halves the grid four times
GIVEN_CHANNEL, GUESS_CHANNELS = 5, slice(7, 10)


class TumourLabelNet(ModelMixin, ConfigMixin):
    """MONAI's BasicUNet in 2D behind diffusers' save/load (`save_pretrained` / `from_pretrained(local_dir)`).

    Where labels are given, the ellipsoid guess is also added to the logits (one-hot, times a learnt scale that starts
    at ``guess_logit``). Started at 4 (the baseline's answer from the first step) it scored below weights trained
    without that term on the held-out lesions (Dice WT 0.41 against 0.47 on the first four case-planes, 1250 steps
    against 1500), so it starts at 0 and the network learns whether to use it."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, features: Sequence[int] = (16, 16, 32, 64, 128, 16), guess_logit: float = 0.0) -> None:
        super().__init__()
        self.network = BasicUNet(spatial_dims=2, in_channels=INPUT_CHANNELS, out_channels=LABEL_CLASSES,
                                 features=tuple(int(f) for f in features))
        self.guess_scale = torch.nn.Parameter(torch.tensor(float(guess_logit)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 10, H, W) -> class logits (B, 4, H, W), any H and W (padded to the network's multiple internally)."""
        height, width = inputs.shape[-2:]
        pad_h, pad_w = (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE
        padded = F.pad(inputs, (0, pad_w, 0, pad_h)) if pad_h or pad_w else inputs
        logits = self.network(padded)[..., :height, :width]
        guess = inputs[:, GUESS_CHANNELS]
        guess_classes = torch.cat([1.0 - guess.sum(dim=1, keepdim=True), guess], dim=1)
        return logits + self.guess_scale * inputs[:, GIVEN_CHANNEL:GIVEN_CHANNEL + 1] * guess_classes


def one_hot_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) BraTS labels -> (3, H, W) maps in {0, 1} for labels 1, 2, 3."""
    return np.stack([(labels == value) for value in (1, 2, 3)]).astype(np.float32)


def label_net_inputs(reconstructed: np.ndarray, input_image: np.ndarray, input_labels: np.ndarray | None,
                     distance_mm: float, guess: np.ndarray | None = None) -> np.ndarray:
    """One network input (10, H, W): images in model units ([-1, 1] by the input slices' scale); ``input_labels``
    None means the labels are to be found (segmentation of the input slice), not that there is no tumour; ``guess``
    the ellipsoid baseline's labels on this plane (None: no labels, no guess)."""
    maps = one_hot_labels(input_labels) if input_labels is not None else np.zeros((3, *input_image.shape), np.float32)
    guess_maps = one_hot_labels(guess) if guess is not None else np.zeros((3, *input_image.shape), np.float32)
    given = np.full(input_image.shape, 1.0 if input_labels is not None else 0.0, np.float32)
    distance = np.full(input_image.shape, np.clip(distance_mm / DISTANCE_SCALE_MM, -4.0, 4.0), np.float32)
    return np.concatenate([reconstructed[None], input_image[None], maps, given[None], distance[None], guess_maps]).astype(np.float32)


@torch.inference_mode()
def predict_labels(net: TumourLabelNet, inputs: np.ndarray, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """(N, 10, H, W) network inputs -> (N, H, W) uint8 BraTS labels (argmax over the four classes)."""
    net = net.to(device).eval()
    parts = []
    for start in range(0, len(inputs), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size])).to(device, net.dtype)
        parts.append(net(chunk).argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, *inputs.shape[-2:]), np.uint8)
