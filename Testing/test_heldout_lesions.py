"""Held-out lesions (the evaluation's second recipe): never imported by training code, sized as asked, nested,
inside the brain, reproducible, varied, and touching the image only near the lesion."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from test_tumour import SPACING, brain_phantom, sphericity, volume_ml
from xdiffusion.data.heldout_lesions import APPEARANCE, ENHANCING, NECROSIS, OEDEMA, PUSH_REACH, paint_heldout_lesion
from xdiffusion.data.tumour import TUMOUR_CONTRAST
from xdiffusion.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1] / "XDiffusionLib" / "xdiffusion"


def _imported_modules(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names, with ``from . import x`` read as x."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module or ''}.{alias.name}" for alias in node.names)
    return names


def test_no_training_code_imports_the_heldout_recipe() -> None:
    sources = [*sorted((PACKAGE / "data").glob("*.py")), *sorted((PACKAGE / "model").glob("*.py")), PACKAGE / "training_run.py"]
    assert len(sources) > 5
    for path in sources:
        if path.name == "heldout_lesions.py":
            continue
        leaks = [name for name in _imported_modules(path) if "heldout_lesions" in name]
        assert not leaks, f"{path.relative_to(PACKAGE)} imports {leaks}"
    assert not any("tumour" in name for name in _imported_modules(PACKAGE / "data" / "heldout_lesions.py"))


def test_knows_every_training_modality() -> None:
    assert set(APPEARANCE) == set(TUMOUR_CONTRAST)


def test_reproducible_from_seed_and_varies_between_seeds() -> None:
    image, mask, _ = brain_phantom()
    first = paint_heldout_lesion(image, mask, "t1", np.random.default_rng(7), SPACING)
    second = paint_heldout_lesion(image, mask, "t1", np.random.default_rng(7), SPACING)
    other = paint_heldout_lesion(image, mask, "t1", np.random.default_rng(8), SPACING)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8


@pytest.mark.parametrize("seed", range(6))
def test_sized_nested_inside_the_brain_and_local(seed: int) -> None:
    image, mask, _ = brain_phantom()
    painted, seg = paint_heldout_lesion(image, mask, "t2", np.random.default_rng(seed), SPACING, min_ml=5.0, max_ml=80.0)
    whole = seg > 0
    assert not np.any(seg[~mask])
    assert 5.0 <= volume_ml(seg) <= 80.0 * 1.02
    assert ndimage.label(whole)[1] == 1
    core = np.isin(seg, (NECROSIS, ENHANCING))
    assert core.any() and (seg == OEDEMA).any()
    assert not ndimage.binary_dilation(core)[~whole].any()
    if (seg == ENHANCING).any() and (seg == NECROSIS).any():
        assert set(np.unique(seg[ndimage.binary_dilation(seg == NECROSIS)]).tolist()) <= {NECROSIS, ENHANCING}
    radius_mm = (3.0 * volume_ml(seg) * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
    far = ndimage.distance_transform_edt(~whole, sampling=SPACING) > PUSH_REACH * radius_mm + SPACING[0]
    assert np.array_equal(painted[far], image[far]) and np.array_equal(painted[~mask], image[~mask])
    assert not np.array_equal(painted[whole], image[whole])


def test_varied_shapes_and_profiles_and_the_size_range_is_kept() -> None:
    image, mask, _ = brain_phantom()
    shapes, profiles, volumes = [], set(), []
    for seed in range(20):
        _, seg = paint_heldout_lesion(image, mask, "t1c", np.random.default_rng(seed), SPACING, min_ml=10.0, max_ml=20.0)
        volumes.append(volume_ml(seg))
        shapes.append(sphericity(seg > 0))
        profiles.add(((seg == NECROSIS).any(), (seg == ENHANCING).any()))
    assert 10.0 <= min(volumes) and max(volumes) <= 20.0 * 1.02
    assert {(True, True), (False, True), (True, False)} <= profiles
    assert np.ptp(shapes) > 0.1 and np.std(shapes) > 0.03, shapes


@pytest.mark.parametrize("modality", sorted(APPEARANCE))
def test_contrast_per_modality(modality: str) -> None:
    image, mask, white = brain_phantom()
    if modality in ("t2", "flair"):  # fluid bright, white matter darker than grey
        image = np.where(mask, 200.0 - image, 0.0).astype(np.float32)
    expected = {"t1": {NECROSIS: -1, OEDEMA: -1}, "t1c": {NECROSIS: -1, ENHANCING: +1},
                "t2": {NECROSIS: +1, OEDEMA: +1}, "flair": {OEDEMA: +1}}[modality]
    normal = float(np.median(image[white]))
    for seed in range(3):
        painted, seg = paint_heldout_lesion(image, mask, modality, np.random.default_rng(seed), SPACING)
        for label, sign in expected.items():
            if (seg == label).sum() > 20:
                assert np.sign(float(np.median(painted[seg == label])) - normal) == sign, (modality, label, seed)


def test_bad_inputs() -> None:
    image, mask, _ = brain_phantom()
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown modality"):
        paint_heldout_lesion(image, mask, "pd", rng)
    with pytest.raises(InputError, match="min_ml"):
        paint_heldout_lesion(image, mask, "t1", rng, min_ml=10.0, max_ml=5.0)
    with pytest.raises(InputError, match="empty"):
        paint_heldout_lesion(image, np.zeros_like(mask), "t1", rng)
