"""The evaluation suite: the model, its ablations and the baselines on held-out volumes, every run cached.

    XDIFFUSION_CACHE=/work/cache python benchmarks/evaluation_suite.py [--grid standard|full] [--model DIR]

then writes docs/results.md, docs/results.html and docs/images/results_*.png (`make_report.py`). One JSON per run in
benchmarks/results/evaluation/runs/; a rerun skips every run whose JSON exists for the same model, so an interrupted
suite resumes where it stopped. The volumes the report's gallery shows are kept in .../evaluation/volumes/ (not
committed; rebuilt by the suite).

Held-out data only: SRI24 (the validation source, never trained on), downsampled to 2 mm, healthy and with synthetic
BraTS-style tumours painted in (fixed seeds). Out of domain (reported apart): SRI24 on an anisotropic clinical grid
(1 x 1 x 3 mm), and a FLAIR-like contrast rendered from SRI24's tissue probability maps (a contrast the model never
trained on; `--modality any`).

Methods (same inputs, same metrics): `xdiffusion` (the model card's default sampling), `pure` (the same model sampled
from pure noise: strength 1, so no atlas prior), `official` (the same model with
the official X-Diffusion sampling: one view, 50 DDIM steps, guidance 7.5; the official code denoises one slice at a
time, we batch all slices of the view per step: the slices are independent, so the maths is the same), `atlas`,
`extrude`, `interpolate` (K >= 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning pool can make each U-Net call
# tens of times slower (measured: 144 s instead of 6.6 s for one tiny-model volume). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.evaluate import evaluate_volumes, per_slice_psnr, uncertainty_ranking  # noqa: E402
from xdiffusion.io import Geometry, Volume, atomic_output, read_volume, write_volume  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "evaluation"
OFFICIAL = {"views": 1, "steps": 50, "guidance": 7.5, "solver": "ddim"}
PURE = {"strength": 1.0, "prior": "extrude"}  # sampling from pure noise: what the model alone makes of the input slices
MODEL_METHODS = ("xdiffusion", "pure", "official")
BASELINES = ("extrude", "interpolate", "atlas")
BASELINE_OWNER = "baseline"  # what a baseline run's record names instead of a model: valid for every model
PLANES = ("axial", "coronal", "sagittal")


@dataclass
class Case:
    """One evaluation volume: image, brain mask and BraTS labels (all zero for a healthy brain)."""

    name: str
    image: Volume
    mask: np.ndarray
    labels: Volume
    modality: str
    domain: str = "in-domain"  # or "out-of-domain"
    tumour_seed: Optional[int] = None


@dataclass(frozen=True)
class Run:
    """One reconstruction to make and score. ``method`` is xdiffusion, pure, official or a baseline."""

    group: str  # main, pure, official, views, steps, guidance, solver, strength, ood
    case: str
    plane: str
    k: int
    method: str
    sampling: tuple = ()  # sorted (key, value) pairs for the model
    seed: int = 0

    @property
    def id(self) -> str:
        """Content only (not the group): an ablation point equal to a main-table run is made once."""
        text = json.dumps([self.case, self.plane, self.k, self.method, list(self.sampling), self.seed])
        readable = f"{self.case}-{self.plane}-k{self.k}-{self.method}-s{self.seed}"
        return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass
class Grid:
    """What to run. ``main``: planes x K x in-domain cases x methods; the ablations on ``ablation_cases``, axial,
    K=1; the out-of-domain cases on ``ood_planes`` x ``ood_k``."""

    name: str
    tumour_seeds: tuple = (0,)
    include_healthy: bool = True
    sampling_seeds: tuple = (0,)
    planes: tuple = PLANES
    ks: tuple = (1, 2, 3, 4)
    official_ks: tuple = (1, 3)
    official_planes: tuple = ("axial",)
    official_cases: Optional[tuple] = None  # None: every in-domain case
    pure_ks: tuple = (1, 3)
    strengths: tuple = (0.3, 0.5, 0.7, 1.0)  # with the default prior
    ablation_cases: tuple = ("tumour0",)
    ablation_seeds: tuple = (0,)
    views: tuple = (1, 2, 3, 4, 6, 8)
    steps: tuple = (4, 8, 12, 25)
    guidance: tuple = (1.0, 2.0, 7.5)
    solvers: tuple = ("dpmsolver++", "unipc", "ddim")
    ood: bool = True
    ood_planes: tuple = ("axial",)
    ood_k: tuple = (1, 3)
    gallery: tuple = ("tumour0", "axial", 1)  # case, plane, K whose volumes the report shows


GRIDS = {
    # the tests: a tiny model on a synthetic volume
    "quick": Grid("quick", tumour_seeds=(0,), planes=("axial",), ks=(1, 2), official_ks=(1,), official_cases=("tumour0",), views=(1, 2),
                  steps=(2, 3), guidance=(1.0, 2.0), solvers=("dpmsolver++", "ddim"), strengths=(0.5, 1.0), ood=False),
    # the published report (docs/results.md gives the measured time)
    "standard": Grid("standard", tumour_seeds=(0, 1)),
    # more seeds: a third tumour, two sampling seeds everywhere (about 2.4x the standard grid's sampling cost)
    "full": Grid("full", tumour_seeds=(0, 1, 2), sampling_seeds=(0, 1), ablation_seeds=(0, 1)),
}


def input_indices(length: int, k: int) -> list[int]:
    """K slice indices evenly spread around the middle ``n // 2``, one sixth of the axis apart."""
    gap = max(1, round(length / 6))
    middle = length // 2
    indices = sorted({int(np.clip(middle + round((j - (k - 1) / 2) * gap), 0, length - 1)) for j in range(k)})
    if len(indices) != k:
        raise InputError(f"cannot place {k} distinct slices on an axis of {length}")
    return indices


def _sampling(defaults: dict, **changes) -> tuple:
    return tuple(sorted({**defaults, **changes}.items()))


def plan_runs(grid: Grid, cases: dict[str, Case], defaults: dict) -> list[Run]:
    """Every run of the grid, in the order they are made (main table first, so a cut-short suite still has it)."""
    in_domain = [name for name, case in cases.items() if case.domain == "in-domain"]
    out_domain = [name for name, case in cases.items() if case.domain != "in-domain"]
    base = _sampling(defaults)
    runs: list[Run] = []
    for case in in_domain:
        for plane in grid.planes:
            for k in grid.ks:
                for method in BASELINES:
                    if method != "interpolate" or k >= 2:
                        runs.append(Run("main", case, plane, k, method))
                for seed in grid.sampling_seeds:
                    runs.append(Run("main", case, plane, k, "xdiffusion", base, seed))
    for case in [c for c in in_domain if grid.official_cases is None or c in grid.official_cases]:
        for plane in grid.official_planes:
            for k in grid.official_ks:
                for seed in grid.sampling_seeds:
                    runs.append(Run("official", case, plane, k, "official", _sampling(defaults, **OFFICIAL, **PURE), seed))
    if dict(base).get("strength", 1.0) < 1.0:  # the default starts from a prior: show the model without it too
        for case in in_domain:
            for plane in grid.planes:
                for k in grid.pure_ks:
                    for seed in grid.sampling_seeds:
                        runs.append(Run("pure", case, plane, k, "pure", _sampling(defaults, **PURE), seed))
    ablation_cases = [c for c in grid.ablation_cases if c in cases] or in_domain[:1]
    for case in ablation_cases:
        for seed in grid.ablation_seeds:
            for name, values in (("views", grid.views), ("steps", grid.steps), ("guidance", grid.guidance), ("solver", grid.solvers),
                                 ("strength", grid.strengths)):
                for value in values:
                    runs.append(Run(name, case, "axial", 1, "xdiffusion", _sampling(defaults, **{name: value}), seed))
    if grid.ood:
        for case in out_domain:
            for plane in grid.ood_planes:
                for k in grid.ood_k:
                    for method in ("xdiffusion",) + BASELINES:
                        if method != "interpolate" or k >= 2:
                            runs.append(Run("ood", case, plane, k, method, base if method == "xdiffusion" else (), 0))
    return runs


def case_names(grid: Grid) -> dict[str, object]:
    """The case names (and domains) a grid makes, without building any volume: for planning and cost estimates."""
    from types import SimpleNamespace

    names = (["healthy"] if grid.include_healthy else []) + [f"tumour{seed}" for seed in grid.tumour_seeds]
    cases = {name: SimpleNamespace(domain="in-domain") for name in names}
    if grid.ood:
        for name in (f"aniso-tumour{grid.tumour_seeds[0]}", f"flairlike-tumour{grid.tumour_seeds[0]}"):
            cases[name] = SimpleNamespace(domain="out-of-domain")
    return cases


def cost_units(run: Run) -> float:
    """Relative sampling cost of a run: views x steps x (2 with guidance), 0 for the baselines."""
    if run.method not in MODEL_METHODS:
        return 0.0
    sampling = dict(run.sampling)
    return float(sampling["views"] * sampling["steps"] * (1 if float(sampling["guidance"]) == 1.0 else 2))


def priority(run: Run, early_cases: tuple = ("healthy", "tumour0")) -> int:
    """Order of making, so a suite cut short by --limit-minutes still has a bit of everything: main K = 1 and 3 and
    the official sampling on the first two cases, then the ablations, then the other cases, main K = 2 and 4, and
    out of domain last."""
    early = run.case in early_cases
    if run.group == "main":
        return (0 if early else 3) if run.k in (1, 3) else 4
    if run.group in ("official", "pure"):
        return 1 if early else 3
    return 5 if run.group == "ood" else 2


def grid_plan(grid: Grid, defaults: dict, cases: Optional[dict] = None) -> list[Run]:
    """The distinct runs of a grid (first group wins, so a run shared by the main table and an ablation is made once)."""
    first: dict[str, Run] = {}
    for run in plan_runs(grid, cases if cases is not None else case_names(grid), defaults):  # type: ignore[arg-type]
        first.setdefault(run.id, run)
    return list(first.values())


# ---------------------------------------------------------------------------------------------------------------
# held-out cases


def _paint(image: Volume, mask: np.ndarray, modality: str, seed: int) -> tuple[Volume, Volume]:
    from xdiffusion.data.tumour import paint_tumour

    painted, labels = paint_tumour(image.array.astype(np.float32), mask, modality, np.random.default_rng(seed), image.geometry.spacing)
    return image.with_array(painted), image.with_array(labels.astype(np.uint8))


def crossing_tumours(image: Volume, mask: np.ndarray, modality: str, count: int, min_voxels: int = 20) -> list[tuple[int, Volume, Volume]]:
    """The first ``count`` tumour seeds (0, 1, 2, ...) whose whole tumour crosses the middle slice of every axis by at
    least ``min_voxels`` voxels, so that one middle slice of any plane sees the tumour (deterministic)."""
    found = []
    for seed in range(200):
        painted, labels = _paint(image, mask, modality, seed)
        tumour = labels.array > 0
        if all(np.take(tumour, n // 2, axis=a).sum() >= min_voxels for a, n in enumerate(tumour.shape)):
            found.append((seed, painted, labels))
            if len(found) == count:
                return found
    raise InputError(f"no {count} tumours crossing the middle slices among 200 seeds")


def fingerprint(case: Case) -> str:
    """A case's content (image and labels), so a cached run is reused only for the very same volume."""
    digest = hashlib.sha256(np.ascontiguousarray(case.image.array, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(case.labels.array).tobytes())
    return digest.hexdigest()[:12]


def _resample(volume: Volume, spacing: tuple, labels: bool = False) -> Volume:
    """The same physical box on a grid of ``spacing`` (low-pass first when coarsening, as a scanner's thick slice)."""
    from scipy import ndimage

    geometry = volume.geometry
    zoom = geometry.spacing / np.asarray(spacing, dtype=np.float64)
    shape = tuple(max(1, int(round(n * z))) for n, z in zip(geometry.shape, zoom))
    zoom = np.asarray(shape) / np.asarray(geometry.shape)
    array = volume.array.astype(np.float32)
    if labels:
        out = ndimage.zoom(volume.array, zoom, order=0, mode="nearest", grid_mode=True)
    else:
        out = ndimage.zoom(ndimage.gaussian_filter(array, np.maximum((1.0 / zoom - 1.0) / 2.0, 0)), zoom, order=1, mode="nearest", grid_mode=True)
    new_spacing = geometry.spacing / zoom
    origin = geometry.origin + geometry.direction @ ((new_spacing - geometry.spacing) / 2.0)
    return Volume(out, Geometry(out.shape, new_spacing, origin, geometry.direction))


def sri24_cases(cache: Path, grid: Grid) -> dict[str, Case]:
    """SRI24 (validation source) at 2 mm, healthy and with tumours; the out-of-domain variants when the grid asks."""
    from xdiffusion.data.fetch import cached_paths
    from xdiffusion.data.loaders import load_training_subjects
    from xdiffusion.data.manifest import validation_sources
    from xdiffusion.data.synthesis import downsample

    (subject,) = load_training_subjects(cache, "validation")
    full, full_mask = subject.modalities["t1"], subject.brain_mask
    image = downsample(full, 120)
    mask = downsample(full_mask, 120, labels=True).array > 0
    empty = image.with_array(np.zeros(image.geometry.shape, dtype=np.uint8))
    cases: dict[str, Case] = {}
    if grid.include_healthy:
        cases["healthy"] = Case("healthy", image, mask, empty, "t1")
    for number, (seed, painted, labels) in enumerate(crossing_tumours(image, mask, "t1", len(grid.tumour_seeds))):
        name = f"tumour{grid.tumour_seeds[number]}"
        cases[name] = Case(name, painted, mask, labels, "t1", tumour_seed=seed)
    if grid.ood:
        first = grid.tumour_seeds[0]
        thick = _resample(full, (1.0, 1.0, 3.0))
        thick_mask = _resample(full_mask, (1.0, 1.0, 3.0), labels=True).array > 0
        ((seed, painted, labels),) = crossing_tumours(thick, thick_mask, "t1", 1)
        cases[f"aniso-tumour{first}"] = Case(f"aniso-tumour{first}", painted, thick_mask, labels, "t1", "out-of-domain", seed)
        (source,) = validation_sources()
        paths = cached_paths(cache, source)
        maps = {name: downsample(read_volume(paths[f"{name}_probability"]), 120).array for name in ("gm", "wm", "csf")}
        # FLAIR-like: grey matter brighter than white matter, CSF dark (T1 has WM > GM > CSF)
        flair = np.clip(1000.0 * (0.95 * maps["gm"] + 0.7 * maps["wm"] + 0.1 * maps["csf"]), 0, None) * mask
        ((seed, painted, labels),) = crossing_tumours(image.with_array(flair.astype(np.float32)), mask, "flair", 1)
        cases[f"flairlike-tumour{first}"] = Case(f"flairlike-tumour{first}", painted, mask, labels, "any", "out-of-domain", seed)
    return cases


# ---------------------------------------------------------------------------------------------------------------
# one run


def _profile(case: Case, prediction: Volume, axis: int, indices: list[int]) -> dict:
    """Per-slice PSNR along the input axis against distance (mm) to the nearest input slice; inputs left out."""
    psnr = per_slice_psnr(case.image, prediction, axis)
    positions = np.arange(case.image.geometry.shape[axis])
    distance = np.abs(positions[:, None] - np.asarray(indices)[None, :]).min(axis=1) * float(case.image.geometry.spacing[axis])
    keep = (distance > 0) & np.isfinite(psnr)
    return {"distance_mm": np.round(distance[keep], 3).tolist(), "psnr": np.round(psnr[keep], 4).tolist()}


def score(case: Case, result, inputs, with_labels: bool) -> dict:
    """All metrics of one reconstruction (the same definitions for every method)."""
    axis, indices = inputs.axis, list(inputs.indices)
    mask = case.image.with_array(case.mask.astype(np.uint8))
    labels = (case.labels, result.segmentation) if with_labels else (None, None)
    metrics = evaluate_volumes(case.image, result.image, mask, *labels, input_axis=axis, input_indices=indices)
    profile = _profile(case, result.image, axis, indices)
    metrics["psnr_slice_unseen"] = float(np.mean(profile["psnr"])) if profile["psnr"] else None
    unseen = case.mask.copy()
    np.moveaxis(unseen, axis, 0)[indices] = False
    if result.uncertainty is not None and np.ptp(result.uncertainty.array) > 0:
        metrics.update(uncertainty_ranking(case.image, result.image, result.uncertainty, unseen))
    labels = case.labels.array
    metrics["tumour_volume_ml"] = float((labels > 0).sum() * np.prod(case.image.geometry.spacing) / 1000.0)
    if result.segmentation is not None:
        metrics["predicted_tumour_ml"] = float((result.segmentation.array > 0).sum() * np.prod(case.image.geometry.spacing) / 1000.0)
    return {"metrics": metrics, "profile": profile}


def execute(run: Run, case: Case, pipeline, atlas: Optional[str] = None) -> tuple[dict, object]:
    inputs = select_slices(case.image, run.plane, input_indices(case.image.geometry.shape[_axis(case, run.plane)], run.k))
    started = time.perf_counter()
    if run.method in MODEL_METHODS:
        result = reconstruct(inputs, "xdiffusion", pipeline, case.modality, **dict(run.sampling), seed=run.seed)
    else:
        result = reconstruct(inputs, run.method, atlas=atlas)
    seconds = time.perf_counter() - started
    scored = score(case, result, inputs, with_labels=result.segmentation is not None)
    return {"seconds": round(seconds, 2), "input_indices": list(inputs.indices), "axis": inputs.axis, **scored}, result


def _axis(case: Case, plane: str) -> int:
    from xdiffusion.geometry import plane_axis

    return plane_axis(case.image.geometry, plane)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def model_identity(pipeline, folder: Optional[Path]) -> str:
    card = getattr(pipeline, "model_card", None) or {}
    text = json.dumps(card.get("sha256") or str(folder), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_suite(grid: Grid, cases: dict[str, Case], pipeline, defaults: dict, model_id: str, out_dir: Path = RESULTS_DIR,
              atlas: Optional[str] = None, log: Callable[[str], None] = print, limit_s: Optional[float] = None) -> dict:
    """Make (or reuse) every run of the grid; returns the suite summary (also written to ``out_dir/suite.json``)."""
    runs_dir, volumes_dir = out_dir / "runs", out_dir / "volumes"
    runs_dir.mkdir(parents=True, exist_ok=True)
    volumes_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = plan_runs(grid, cases, defaults)
    prints = {name: fingerprint(case) for name, case in cases.items()}
    planned = sorted(grid_plan(grid, defaults, cases), key=priority)
    made = reused = skipped = 0
    for number, run in enumerate(planned, start=1):
        path = runs_dir / f"{run.id}.json"
        owner = model_id if cost_units(run) > 0 else BASELINE_OWNER  # baselines do not depend on the model
        if path.exists() and json.loads(path.read_text()).get("model") == owner and json.loads(path.read_text()).get("case_fingerprint") == prints[run.case]:
            reused += 1
            continue
        if pipeline is None and cost_units(run) > 0:  # --baselines-only
            skipped += 1
            continue
        if limit_s is not None and time.perf_counter() - started > limit_s:
            skipped += 1
            continue
        case = cases[run.case]
        run_started = time.perf_counter()
        try:
            record, result = execute(run, case, pipeline, atlas)
        except InputError as error:  # e.g. K slices that do not fit: recorded, not fatal
            record, result = {"error": str(error)}, None
        record["wall_seconds"] = round(time.perf_counter() - run_started, 2)
        record = {"run": {"id": run.id, "group": run.group, "case": run.case, "domain": case.domain, "plane": run.plane,
                          "k": run.k, "method": run.method, "sampling": dict(run.sampling), "seed": run.seed,
                          "tumour_seed": case.tumour_seed, "modality": case.modality,
                          "grid_shape": list(case.image.geometry.shape),
                          "grid_spacing": np.round(case.image.geometry.spacing, 3).tolist()},
                  "model": owner, "case_fingerprint": prints[run.case], **record}
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(_json_safe(record), allow_nan=False) + "\n")
        made += 1
        if result is not None and (run.case, run.plane, run.k) == grid.gallery and run.seed == 0 and run.group in ("main", "pure", "official"):
            _keep_volumes(volumes_dir, case, run, result)
        metrics = record.get("metrics", {})
        log(f"[{number}/{len(planned)}] {run.id}: {record.get('seconds', 0):.1f} s, PSNR "
            f"{metrics.get('psnr') or float('nan'):.2f} dB, SSIM {metrics.get('ssim') or float('nan'):.3f}")
    wall = time.perf_counter() - started
    summary = {"grid": grid.name, "planned": len(planned), "made": made, "reused": reused, "skipped_for_time": skipped,
               "wall_seconds_this_invocation": round(wall, 1), "model": model_id, "defaults": defaults,
               "plan": [{"id": run.id, "group": run.group} for run in plan],
               "grid_costs": {name: {"runs": len(runs), "model_runs": sum(cost_units(r) > 0 for r in runs),
                                     "atlas_runs": sum(r.method == "atlas" for r in runs),
                                     "cost_units": sum(cost_units(r) for r in runs)}
                              for name, runs in ((n, grid_plan(g, defaults)) for n, g in GRIDS.items())}}
    write_summary(out_dir, summary)
    return summary


def write_summary(out_dir: Path, summary: dict, replace_last: bool = False) -> None:
    """suite.json: this invocation's plan and counts, plus the history of every invocation (wall times)."""
    path = out_dir / "suite.json"
    history = json.loads(path.read_text()).get("history", []) if path.exists() else []
    entry = {key: summary.get(key) for key in ("grid", "made", "reused", "skipped_for_time", "wall_seconds_this_invocation", "model")}
    entry["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry["wall_seconds_total"] = summary.get("wall_seconds_total")
    if replace_last and history:
        history = history[:-1]
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(_json_safe({**summary, "history": history + [entry]}), indent=1) + "\n")


def _keep_volumes(folder: Path, case: Case, run: Run, result) -> None:
    """The gallery's volumes: reference (once), and each method's reconstruction, labels and uncertainty."""
    if not (folder / f"{case.name}_reference.nii.gz").exists():
        write_volume(case.image.with_array(case.image.array.astype(np.float32)), folder / f"{case.name}_reference.nii.gz")
        write_volume(case.labels, folder / f"{case.name}_reference_seg.nii.gz")
    stem = f"{case.name}_{run.plane}_k{run.k}_{run.method}"
    write_volume(result.image.with_array(result.image.array.astype(np.float32)), folder / f"{stem}.nii.gz")
    if result.segmentation is not None:
        write_volume(result.segmentation, folder / f"{stem}_seg.nii.gz")
    if result.uncertainty is not None:
        write_volume(result.uncertainty, folder / f"{stem}_unc.nii.gz")


def main(argv: Optional[Iterable[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="standard")
    parser.add_argument("--model", default=None, metavar="DIR", help="default: $XDIFFUSION_MODEL_DIR, else the shipped model")
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR", help="fetched data (default $XDIFFUSION_CACHE)")
    parser.add_argument("--atlas", default=None, metavar="PATH", help="template for the atlas baseline (default: shipped)")
    parser.add_argument("--limit-minutes", type=float, default=None, help="stop starting new runs after this long")
    parser.add_argument("--no-report", action="store_true", help="skip make_report.py at the end")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own; 1 on a busy machine, "
                        "where an oversubscribed OpenMP pool spin-waits)")
    parser.add_argument("--baselines-only", action="store_true", help="make only the baseline runs (no model needed)")
    parser.add_argument("--plan", action="store_true", help="print each grid's runs and sampling cost, then stop")
    args = parser.parse_args(argv)
    if args.plan:
        for name, grid in GRIDS.items():
            runs = grid_plan(grid, {"views": 4, "steps": 12, "guidance": 1.0, "solver": "dpmsolver++"})
            print(f"{name}: {len(runs)} runs, {sum(cost_units(r) > 0 for r in runs)} with the model, "
                  f"{sum(cost_units(r) for r in runs):.0f} cost units (views x steps x guidance factor)")
        return

    import torch

    from xdiffusion.cli import DEFAULT_SAMPLING
    from xdiffusion.data.fetch import default_cache_dir
    from xdiffusion.model_location import resolve_model_dir
    from xdiffusion.pipeline import XDiffusionPipeline

    torch.set_grad_enabled(False)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    grid = GRIDS[args.grid]
    if args.baselines_only:
        folder, pipeline, defaults = None, None, {**DEFAULT_SAMPLING, "solver": "dpmsolver++"}
    else:
        folder = resolve_model_dir(args.model)
        pipeline = XDiffusionPipeline.from_pretrained(folder)
        defaults = {**DEFAULT_SAMPLING, **pipeline.model_card.get("default_sampling", {}), "solver": "dpmsolver++"}
    cases = sri24_cases(Path(args.cache) if args.cache else default_cache_dir(), grid)
    print(f"cases ready in {time.perf_counter() - started:.0f} s: {', '.join(cases)}; sampling defaults {defaults}")
    summary = run_suite(grid, cases, pipeline, defaults, model_identity(pipeline, folder) if pipeline is not None else BASELINE_OWNER,
                        limit_s=None if args.limit_minutes is None else 60 * args.limit_minutes)
    summary["model_dir"] = str(folder)
    # the card's word on tumour labels: a model that does not segment writes empty maps, which are not results
    summary["segments_tumours"] = pipeline.model_card.get("segments_tumours") if pipeline is not None else None
    summary["wall_seconds_total"] = round(time.perf_counter() - started, 1)
    from common import machine

    summary["machine"] = machine()
    write_summary(RESULTS_DIR, summary, replace_last=True)
    print(f"suite {grid.name}: {summary['made']} runs made, {summary['reused']} reused, {summary['skipped_for_time']} "
          f"skipped for time, {summary['wall_seconds_total']:.0f} s")
    if not args.no_report and pipeline is not None:
        import make_report

        make_report.main([])


if __name__ == "__main__":
    main()
