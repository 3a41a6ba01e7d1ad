"""A small synthetic T1-like head with a known brain mask, movable in patient space (for mask and fetch tests)."""

from __future__ import annotations

import numpy as np

from xdiffusion.io import Geometry, Volume

SPACING = 3.0


def synthetic_head(shape=(48, 52, 46), scale=(1.0, 1.0, 1.0), angle_degrees=0.0, shift_mm=(0.0, 0.0, 0.0)):
    """A T1-like head: scalp (bright), skull (dark), CSF (dark), grey and white matter, ventricles.

    Returns (image, brain mask) on a 3 mm grid; ``scale``, ``angle_degrees`` (about the S axis) and ``shift_mm``
    move and reshape the head in patient space, as a different person in a different pose would be.
    """
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    centre = (np.asarray(shape) - 1) / 2.0
    points = (index - centre) * SPACING - np.asarray(shift_mm)
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), np.sin(angle), 0.0], [-np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    local = points @ rotation.T / np.asarray(scale)

    def inside(radii, centre_mm=(0.0, 0.0, 0.0)):
        return (((local - np.asarray(centre_mm)) / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0

    image = np.zeros(shape, dtype=np.float32)
    image[inside((66, 78, 62))] = 180.0  # scalp and fat
    image[inside((61, 73, 57))] = 20.0  # skull
    brain = inside((55, 67, 51))
    image[brain] = 35.0  # CSF
    image[inside((52, 64, 48))] = 80.0  # grey matter
    image[inside((42, 52, 36))] = 120.0  # white matter
    image[inside((6, 18, 9), (10, 0, 5)) | inside((6, 18, 9), (-10, 0, 5))] = 35.0  # lateral ventricles
    geometry = Geometry(shape, (SPACING,) * 3, -centre * SPACING, np.eye(3))
    return Volume(image, geometry, {}), Volume(brain.astype(np.uint8), geometry, {})
