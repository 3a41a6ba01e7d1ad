"""A picture of each held-out subject's 6 mm thick stacks upsampled by every method that ran, beside the truth.

    XDIFFUSION_CACHE=<fetched data> python benchmarks/upsample_figures.py [--learned-net DIR] [--thickness 6]

The same simulated stacks as `upsample_benchmark.py` (its `Case`). Each row is one stack (axial, coronal); each
panel shows the plane that cuts across the slabs (coronal for an axial stack, axial for a coronal one) at the middle,
where the loss of detail between slices shows: the thick input (each slab's mean repeated over its thickness),
`linear`, `bspline`, `learned` (when weights exist), the 1 mm truth, and |learned - truth|. Every panel shares the
truth's 0.5-99.5 percentile window. Writes docs/images/upsample_<subject>.png; these are renderings of computed
volumes, not screenshots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ROOT  # noqa: E402
from upsample_benchmark import PLANES, SUBJECTS, Case  # noqa: E402
from xdiffusion.figures import display_slice  # noqa: E402
from xdiffusion.io import Volume, atomic_output  # noqa: E402
from xdiffusion.upsample import upsample  # noqa: E402
from xdiffusion.upsample.through_plane import PACKAGED_WEIGHTS, load_through_plane_net, weights_sha256  # noqa: E402

CROSS_PLANE = {"axial": "coronal", "coronal": "axial"}
IMAGES = ROOT / "docs" / "images"


def thick_on_truth_grid(case: Case) -> Volume:
    """The input as acquired, drawn on the truth's grid: each slab's mean over the slab's voxels."""
    array = np.repeat(case.stack.volume.array.astype(np.float32), case.voxels_per_slab, axis=case.axis)
    return Volume(array, case.truth.geometry)


def panels(case: Case, net) -> list[tuple[str, Volume]]:
    shown = [("thick input", thick_on_truth_grid(case))]
    for method in ("linear", "bspline"):
        shown.append((method, upsample(case.stack, method, grid=case.truth.geometry).image))
    if net is not None:
        shown.append(("learned", upsample(case.stack, "learned", grid=case.truth.geometry, through_plane_net=net).image))
    shown.append(("truth (1 mm)", case.truth))
    return shown


def draw(subject: str, rows: list[tuple[Case, list[tuple[str, Volume]]]], network: str, target: Path) -> None:
    columns = len(rows[0][1]) + 1
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)), squeeze=False)
    for row, (case, shown) in zip(axes, rows):
        plane = CROSS_PLANE[case.plane]
        low, high = np.percentile(case.truth.array, (0.5, 99.5))
        truth_slice, aspect = display_slice(case.truth, plane)
        for ax, (title, volume) in zip(row, shown):
            image, _ = display_slice(volume, plane)
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{title}" if title != "thick input" else f"{case.plane} {case.stack.thickness_mm:.1f} mm slabs",
                         fontsize=8)
        last_name, last = shown[-2]
        error, _ = display_slice(last, plane)
        row[-1].imshow(np.abs(error - truth_slice), cmap="magma", vmin=0, vmax=0.25 * (high - low), aspect=aspect,
                       interpolation="nearest")
        row[-1].set_title(f"|{last_name} - truth| (0-25 %)", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"{plane} view", fontsize=8)
    figure.suptitle(f"{subject} (held out): thick stacks to 1 mm; generated between the slabs, not measured. {network}",
                    fontsize=8)
    figure.tight_layout()
    with atomic_output(target) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--thickness", type=int, default=6)
    parser.add_argument("--learned-net", default=None, metavar="DIR", help="a through-plane network (default: the packaged one)")
    args = parser.parse_args()
    from xdiffusion.data.loaders import load_source_subject

    net, network = None, "no through-plane network"
    if args.learned_net or (PACKAGED_WEIGHTS / "config.json").is_file():
        net = load_through_plane_net(args.learned_net)
        network = f"learned: ThroughPlaneNet {weights_sha256(net)[:12]}"
    for subject_id in SUBJECTS:
        subject = load_source_subject(subject_id, args.cache)
        rows = []
        for plane in PLANES:
            case = Case(subject_id, plane, args.thickness, subject.modalities["t1"], subject.brain_mask)
            rows.append((case, panels(case, net)))
        target = IMAGES / f"upsample_{subject_id}.png"
        draw(subject_id, rows, network, target)
        print(target)


if __name__ == "__main__":
    main()
