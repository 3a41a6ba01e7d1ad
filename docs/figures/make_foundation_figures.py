"""Draw the figures of docs/geometry.md from the fetched real volumes.

    /work/venv/bin/python docs/figures/make_foundation_figures.py --cache /work/cache

writes docs/images/geometry_views.png (the canonical cube and its views) and docs/images/training_samples.png
(training samples as the model sees them). Deterministic: fixed seeds, no GPU, well under a minute on 2 cores.

Display convention used in every panel (stated again in the figure captions): a 2D array indexed (a, b) is drawn
with a along the screen's x and b along its y, then flipped so that the screen's "up" is anterior for axial-like
planes and superior otherwise, and "right" is the patient's left (radiological) where the plane contains the
left-right axis (posterior for sagittal). Each panel's edges are labelled with the anatomical direction they point to.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from xdiffusion import geometry  # noqa: E402
from xdiffusion.data import samples, synthesis, tumour  # noqa: E402
from xdiffusion.data.loaders import load_training_subjects  # noqa: E402

SIDE = 96
TUMOUR_SEED = 2
DPI = 110


def WRAP(text: str) -> str:  # noqa: N802
    return textwrap.fill(text, 150)
VIEW_NAMES = ("axial", "coronal", "sagittal", "oblique", "oblique")
VIEW_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
BRATS_COLOURS = {1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.0), 3: (0.0, 0.3, 1.0)}  # necrotic, oedema, enhancing
BRATS_NAMES = {1: "1 necrotic core", 2: "2 oedema", 3: "3 enhancing"}
CUBE_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (positive, negative) end of cube axes 0, 1, 2


# --- display orientation --------------------------------------------------------------------------------------------

def direction_letters(vector: np.ndarray) -> str:
    """Anatomical name of a cube-frame direction, e.g. 'L', 'PS' (components above 0.3 of the largest)."""
    vector = np.asarray(vector, dtype=np.float64)
    largest = np.max(np.abs(vector))
    order = np.argsort(-np.abs(vector))
    return "".join(CUBE_AXIS_LETTERS[a][0 if vector[a] > 0 else 1] for a in order if abs(vector[a]) > 0.3 * largest)


def oriented(image: np.ndarray, a_dir: np.ndarray, b_dir: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Screen image (rows top→bottom) from an array indexed (a, b), with its 'up' and 'right' direction names.

    Up is anterior when the plane is axial-like (normal mostly S), superior otherwise; right is the patient's left
    when the plane contains the L-R axis (radiological), posterior otherwise.
    """
    a_dir, b_dir = np.asarray(a_dir, float), np.asarray(b_dir, float)
    up_pref = np.array([0.0, -1.0, 0.0]) if np.argmax(np.abs(normal)) == 2 else np.array([0.0, 0.0, 1.0])
    right_pref = np.array([1.0, 0.3, 0.0])
    screen = np.swapaxes(image, 0, 1)  # rows = b (downwards), columns = a (rightwards); RGB stays last
    up = -b_dir
    if b_dir @ up_pref > 0:
        screen, up = screen[::-1], b_dir
    right = a_dir
    if a_dir @ right_pref < 0:
        screen, right = screen[:, ::-1], -a_dir
    return screen, direction_letters(up), direction_letters(right)


def show(ax, screen: np.ndarray, up: str, right: str, **kwargs) -> None:
    ax.imshow(screen, origin="upper", interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    style = dict(color="yellow", fontsize=8, fontweight="bold", transform=ax.transAxes)
    ax.text(0.5, 0.98, up, ha="center", va="top", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def view_axes(rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cube-frame directions of a view's array axes 0, 1 and its stacking axis 2 (rows of R)."""
    return rotation[0], rotation[1], rotation[2]


def normal_text(normal: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:+.2f}".replace("+0.00", "0").replace("-0.00", "0") for v in normal) + ")"


# --- figure 1: the cube and its views -------------------------------------------------------------------------------

def plane_polygon(rotation: np.ndarray, side: int, depth_index: float) -> np.ndarray:
    """Corners of the intersection of view slice ``depth_index`` with the cube [0, side-1]^3, in cube coordinates."""
    middle = (side - 1) / 2.0
    normal = rotation[2]
    offset = depth_index - middle  # plane: normal · (p - m) = offset
    corners = np.array([[x, y, z] for x in (0, side - 1) for y in (0, side - 1) for z in (0, side - 1)], float)
    points = []
    for i in range(8):
        for j in range(i + 1, 8):
            if np.sum(corners[i] != corners[j]) != 1:
                continue  # not a cube edge
            fi, fj = normal @ (corners[i] - middle) - offset, normal @ (corners[j] - middle) - offset
            if fi == fj or fi * fj > 0:
                if abs(fi) < 1e-9:
                    points.append(corners[i])
                continue
            t = fi / (fi - fj)
            points.append(corners[i] + t * (corners[j] - corners[i]))
    points = np.unique(np.round(np.array(points), 6), axis=0)
    centre = points.mean(axis=0)
    u = rotation[0]
    v = rotation[1]
    angles = np.arctan2((points - centre) @ v, (points - centre) @ u)
    return points[np.argsort(angles)]


def cube_outline(ax, side: int) -> None:
    s = side - 1
    for a in range(3):
        for x in (0, s):
            for y in (0, s):
                start, end = np.zeros(3), np.zeros(3)
                others = [b for b in range(3) if b != a]
                start[others], end[others] = (x, y), (x, y)
                end[a] = s
                ax.plot(*zip(start, end), color="black", linewidth=0.8)


def geometry_figure(subject, output: Path) -> None:
    volume = subject.modalities["t1"]
    frame = geometry.cube_frame_for_grid(volume.geometry, SIDE)
    cube = geometry.volume_to_cube(volume, frame, order=1)
    cube = np.maximum(cube, 0)
    vmax = float(np.percentile(cube[cube > 0], 99.5))
    rotations = geometry.view_rotations(5)

    fig = plt.figure(figsize=(12.0, 9.4))
    for k, rotation in enumerate(rotations):
        view = geometry.rotate_cube(cube, rotation)
        a_dir, b_dir, normal = view_axes(rotation)
        screen, up, right = oriented(view[:, :, SIDE // 2], a_dir, b_dir, normal)
        ax = fig.add_subplot(2, 3, k + 1)
        show(ax, screen, up, right, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"view {k}: {VIEW_NAMES[k]}, stacking normal {direction_letters(normal)}\n"
                     f"{normal_text(normal)} in cube axes (L, P, S); up {up}, right {right}",
                     fontsize=9, color=VIEW_COLOURS[k])
        for spine in ax.spines.values():
            spine.set_edgecolor(VIEW_COLOURS[k])
            spine.set_linewidth(2.5)

    ax = fig.add_subplot(2, 3, 6, projection="3d")
    cube_outline(ax, SIDE)
    for k, rotation in enumerate(rotations):
        polygon = plane_polygon(rotation, SIDE, SIDE // 2)
        ax.add_collection3d(Poly3DCollection([polygon], facecolor=VIEW_COLOURS[k], edgecolor=VIEW_COLOURS[k],
                                             alpha=0.25, linewidths=1.5))
        ax.plot(*np.vstack([polygon, polygon[:1]]).T, color=VIEW_COLOURS[k], linewidth=1.5)
    s = SIDE - 1
    for axis, letter in enumerate("LPS"):
        tip = np.zeros(3)
        tip[axis] = s * 1.18
        ax.quiver(0, 0, 0, *tip, color="black", arrow_length_ratio=0.08, linewidth=1.2)
        ax.text(*(tip * 1.05), f"{letter} ({axis})", fontsize=9, fontweight="bold")
    ax.set_xlim(0, s * 1.2), ax.set_ylim(0, s * 1.2), ax.set_zlim(0, s * 1.2)
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=24, azim=-130)
    ax.set_title("middle plane of each view in the cube\n(colours match the panels; cube axis numbers in brackets)", fontsize=9)

    fig.suptitle(f"ICBM 2009c T1 in the canonical cube ({SIDE}³ voxels, side {frame.size_mm:.0f} mm = the grid's "
                 f"largest extent, {frame.voxel_mm:.2f} mm voxels)\nmiddle slice view[:, :, {SIDE // 2}] of each of "
                 f"geometry.view_rotations(5)",
                 fontsize=10.5)
    fig.text(0.5, 0.01, WRAP("Display: axial-like slices anterior up, others superior up; patient's left on the right "
             "(radiological) where the plane holds L-R, else posterior on the right. Yellow letters name the top and "
             "right edges. Oblique views leave the cube's corners empty (black)."), ha="center", fontsize=8.5)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.06, wspace=0.08, hspace=0.28)
    fig.savefig(output, dpi=DPI)
    plt.close(fig)


# --- figure 2: training samples -------------------------------------------------------------------------------------

def is_permutation(rotation: np.ndarray) -> bool:
    return bool(np.allclose(rotation, np.round(rotation), atol=1e-6))


def describe_rotation(rotation: np.ndarray) -> str:
    normal = rotation[2]
    if is_permutation(rotation):
        return {2: "axial", 1: "coronal", 0: "sagittal"}[int(np.argmax(np.abs(normal)))] + " view"
    presets = geometry.view_rotations(samples.PRESET_VIEWS)
    if any(np.allclose(rotation, p, atol=1e-6) for p in presets):
        return f"oblique view {direction_letters(normal)}"
    return f"random view {normal_text(normal)}"


def pick_sample(generator: samples.SampleGenerator, want) -> tuple[int, dict[str, np.ndarray]]:
    """The first item (in index order, so deterministic) satisfying ``want``."""
    for index in range(500):
        sample = {key: value.numpy() for key, value in generator[index].items()}
        if want(sample):
            return index, sample
    raise RuntimeError("no sample matched")


def draw_inputs(ax, sample: dict[str, np.ndarray]) -> str:
    """Each present input slice in its own inset of ``ax`` (oriented, edges labelled); returns a caption."""
    count = int(sample["input_present"].sum())
    axis = int(sample["input_plane"][0])
    in_plane = [c for c in range(3) if c != axis]
    a_dir, b_dir, normal = np.eye(3)[in_plane[0]], np.eye(3)[in_plane[1]], np.eye(3)[axis]
    ax.axis("off")
    boxes = {1: [(0, 0, 1, 1)], 2: [(0, 0.25, 0.49, 0.49), (0.51, 0.25, 0.49, 0.49)]}.get(
        count, [(0, 0.51, 0.49, 0.49), (0.51, 0.51, 0.49, 0.49), (0, 0, 0.49, 0.49), (0.51, 0, 0.49, 0.49)])
    for slot in range(count):
        screen, up, right = oriented(sample["inputs"][slot], a_dir, b_dir, normal)
        inset = ax.inset_axes(boxes[slot])
        show(inset, screen, up, right, cmap="gray", vmin=-1, vmax=1)
        inset.text(0.03, 0.03, f"{sample['input_position'][slot]:+.2f}", color="cyan", fontsize=7,
                   transform=inset.transAxes)
    plane = {0: "sagittal", 1: "coronal", 2: "axial"}[axis]
    return f"{count} {plane} input(s) (normal = cube axis {axis}),\nposition along it in cyan"


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    grey = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label, colour in BRATS_COLOURS.items():
        mask = labels == label
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(colour)
    return rgb


def training_figure(train, output: Path) -> None:
    icbm = next(s for s in train if s.id == "icbm2009c")
    dk = next(s for s in train if s.id == "desikan_killiany")
    t1 = synthesis.downsample(icbm.modalities["t1"], SIDE)
    t2 = synthesis.downsample(icbm.modalities["t2"], SIDE)
    mask = synthesis.downsample(icbm.brain_mask, SIDE, labels=True)
    cerebra = synthesis.downsample(icbm.labels, SIDE, labels=True)
    desikan = synthesis.downsample(dk.labels, SIDE, labels=True)

    rng = np.random.default_rng(7)
    synth_cerebra = cerebra.with_array(synthesis.synthesise_from_labels(cerebra, rng))
    synth_desikan = desikan.with_array(synthesis.synthesise_from_labels(desikan, np.random.default_rng(11)))
    painted, seg = tumour.paint_tumour(t1.array, mask.array, "t1", np.random.default_rng(TUMOUR_SEED),
                                       t1.geometry.spacing)
    tumour_cube = samples.make_training_cube(t1.with_array(painted), "t1", SIDE, tumour=t1.with_array(seg))

    modalities = ["t1", "t2", "synthetic"]
    rows = []  # (row title, sample, how it was drawn)

    def generator(cube):
        return samples.SampleGenerator([cube], modalities, max_inputs=4, seed=2024)

    index, sample = pick_sample(generator(samples.make_training_cube(t1, "t1", SIDE)),
                                lambda s: s["input_present"].sum() >= 2 and s["input_plane"][0] == 2
                                and is_permutation(s["rotation"]) and abs(s["rotation"][2, 2]) < 0.5)
    rows.append(("real T1 (ICBM 2009c)", sample, f"SampleGenerator(seed=2024)[{index}]"))
    index, sample = pick_sample(generator(samples.make_training_cube(t2, "t2", SIDE)),
                                lambda s: s["input_present"].sum() >= 2 and not is_permutation(s["rotation"])
                                and describe_rotation(s["rotation"]).startswith("oblique"))
    rows.append(("real T2 (ICBM 2009c)", sample, f"SampleGenerator(seed=2024)[{index}]"))
    index, sample = pick_sample(generator(samples.make_training_cube(synth_cerebra, "synthetic", SIDE)),
                                lambda s: s["input_plane"][0] == 1 and is_permutation(s["rotation"])
                                and abs(s["rotation"][2, 1]) < 0.5)
    rows.append(("synthesised from CerebrA labels", sample, f"SampleGenerator(seed=2024)[{index}]"))
    index, sample = pick_sample(generator(samples.make_training_cube(synth_desikan, "synthetic", SIDE)),
                                lambda s: s["input_plane"][0] == 0 and is_permutation(s["rotation"])
                                and abs(s["rotation"][2, 0]) < 0.5)
    rows.append(("synthesised from Desikan-Killiany", sample, f"SampleGenerator(seed=2024)[{index}]"))

    # tumour row: axial inputs through the tumour, target = the coronal slice through its centre (build_sample)
    centre = np.round(np.argwhere(tumour_cube.tumour > 0).mean(axis=0)).astype(int)
    positions = [int(centre[2]) - 6, int(centre[2]), int(centre[2]) + 6]
    raw = [np.take(tumour_cube.image, p, axis=2) for p in positions]
    scale = samples.IntensityScale.from_slices(raw)
    slices = [geometry.CubeSlice(scale.normalise(s), 2, float((p - (SIDE - 1) / 2) / (SIDE / 2)))
              for s, p in zip(raw, positions)]
    coronal = geometry.view_rotations(3)[1]
    depth = int(centre[1])  # the coronal view stacks along cube axis 1 (P), running the same way
    sample = samples.build_sample(tumour_cube, scale, slices, coronal, depth, modalities.index("t1"), 4)
    rows.append((f"real T1 + painted tumour (seed {TUMOUR_SEED})", sample, "build_sample through its centre"))

    columns = ("input slice(s)", "extrude guess", "target image", "target + tumour labels")
    fig, axes = plt.subplots(len(rows), 4, figsize=(11.2, 2.75 * len(rows)), gridspec_kw={"width_ratios": (1.3, 1, 1, 1)})
    for r, (title, sample, how) in enumerate(rows):
        input_text = draw_inputs(axes[r, 0], sample)
        axes[r, 0].text(0.5, -0.04, input_text, transform=axes[r, 0].transAxes, ha="center", va="top", fontsize=7.5)
        axes[r, 0].text(-0.06, 0.5, f"{title}\n{how}", transform=axes[r, 0].transAxes, ha="right", va="center",
                        rotation=90, fontsize=8)
        rotation = sample["rotation"].astype(np.float64)
        a_dir, b_dir, normal = view_axes(rotation)
        target = sample["target"]
        labels = np.zeros(target.shape[1:], dtype=np.uint8)
        for channel, label in enumerate(samples.TUMOUR_LABELS, start=1):
            labels[target[channel] > 0] = label
        view_text = f"{describe_rotation(rotation)}, depth {float(sample['depth']):+.2f}"
        for c, image in enumerate((sample["guess"][0], target[0])):
            screen, up, right = oriented(image, a_dir, b_dir, normal)
            show(axes[r, c + 1], screen, up, right, cmap="gray", vmin=-1, vmax=1)
            axes[r, c + 1].set_xlabel(view_text, fontsize=7.5)
        rgb, up, right = oriented(overlay(target[0], labels), a_dir, b_dir, normal)
        show(axes[r, 3], rgb, up, right)
        present = [BRATS_NAMES[label] for label in BRATS_COLOURS if np.any(labels == label)]
        axes[r, 3].set_xlabel(", ".join(present) if present else "no tumour labels (healthy brain)", fontsize=7.5)
    for c, title in enumerate(columns):
        axes[0, c].set_title(title, fontsize=10)
    fig.legend(handles=[Patch(color=BRATS_COLOURS[k], label=BRATS_NAMES[k]) for k in BRATS_COLOURS],
               loc="lower center", ncol=3, fontsize=8.5, frameon=False, bbox_to_anchor=(0.5, 0.018))
    fig.suptitle(f"Training samples in a {SIDE}³ cube (volumes downsampled to {SIDE} voxels first); values in [-1, 1]",
                 fontsize=10.5)
    fig.text(0.5, 0.005, WRAP("Display: axial-like slices anterior up, others superior up; patient's left on the right "
             "where the plane holds L-R. Yellow letters name the top and right edges. BraTS colours: red 1 necrotic "
             "core, green 2 oedema, blue 3 enhancing."), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.975))
    fig.savefig(output, dpi=DPI)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="data cache of `xdiffusion fetch-data` (default: its default)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "images"), help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_training_subjects(args.cache, split="train")
    geometry_figure(next(s for s in train if s.id == "icbm2009c"), out / "geometry_views.png")
    training_figure(train, out / "training_samples.png")
    for name in ("geometry_views.png", "training_samples.png"):
        print(out / name, f"{(out / name).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
