"""`xdiffusion reconstruct-cohort`: many volumes, each rebuilt from its chosen slice(s), sharded across processes.

Sharding is accelerate's: `accelerate launch --multi_gpu --num_processes N -m xdiffusion.cli reconstruct-cohort ...`
gives each process (one per GPU, or CPU workers on a machine without GPU; on one node or several) its share of the
inputs through `PartialState().split_between_processes`; a plain `xdiffusion reconstruct-cohort` is one process.
(accelerate's own `--cpu` multi-process mode goes through mpirun and needs an MPI hostfile; `--multi_gpu` on a
machine without GPU runs the same gloo CPU processes without MPI.) CPU processes share the cores: torch threads are
set to cores / processes. Outputs are written
atomically, each with its provenance sidecar (`provenance`), so a finished output is a complete one and a rerun skips
it (resumable). One summary table (CSV and printed) lists every input with its output, seconds, status and the run's
warnings (fallbacks such as an input slice left out of the atlas registration); a bad file is a failed row, not a dead
cohort.
"""

from __future__ import annotations

import csv
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import InputError, XDiffusionError
from .io import VOLUME_SUFFIXES, atomic_output
from .provenance import check_sidecars

SUMMARY_NAME = "cohort_summary.csv"
PARTS_FOLDER = ".cohort_parts"
OUTPUT_SUFFIX = "_xdiffusion.nii.gz"
FIELDS = ("input", "output", "seconds", "status", "message", "warnings")
WARNING_SEPARATOR = " | "  # between a row's warnings in the summary's `warnings` column


@dataclass
class CohortItem:
    input: str
    output: str
    segmentation: Optional[str] = None  # BraTS labels on the input slices (`reconstruct --input-segmentation`)


@dataclass
class CohortRow:
    input: str
    output: str
    seconds: float
    status: str  # done | skipped (already finished) | failed
    message: str = ""
    warnings: str = ""  # the run's fallbacks (`Reconstruction.warnings`), joined by WARNING_SEPARATOR


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_cohort(source: str | os.PathLike, output_dir: str | os.PathLike) -> list[CohortItem]:
    """The cohort's inputs and their outputs, in a fixed order (every process must see the same list).

    A folder: its volume files (and sub-folders, as DICOM series), sorted by name. A CSV: an `input` column (else the
    first column), an optional `output` column and an optional `segmentation` column (the input slices' tumour
    labels, as `reconstruct --input-segmentation`; an empty cell: none); relative paths are relative to the CSV's
    folder.
    """
    source, output_dir = Path(source), Path(output_dir)
    if source.is_dir():
        entries = sorted(p for p in source.iterdir() if not p.name.startswith(".") and
                         (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)))
        rows_found = [(p, None, None) for p in entries]
    elif source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            raise InputError(f"{source} is empty")
        header = [h.strip().lower() for h in rows[0]]
        has_header = "input" in header
        column = header.index("input") if has_header else 0
        out_column = header.index("output") if has_header and "output" in header else None
        seg_column = header.index("segmentation") if has_header and "segmentation" in header else None
        rows_found = []
        for row in rows[1:] if has_header else rows:
            if not row or not row[column].strip():
                continue
            output = _cell(row, out_column)
            segmentation = _cell(row, seg_column)
            rows_found.append((_beside(source, row[column].strip()), output,
                               _beside(source, segmentation) if segmentation else None))
    else:
        raise InputError(f"{source} is neither a folder nor a .csv file")
    if not rows_found:
        raise InputError(f"no volumes found in {source}")
    items, seen = [], set()
    for path, output, segmentation in rows_found:
        target = Path(output) if output else Path(f"{_volume_name(path)}{OUTPUT_SUFFIX}")
        target = target if target.is_absolute() else output_dir / target
        if target in seen:
            raise InputError(f"two inputs would write the same output {target}; give an output column in the CSV")
        seen.add(target)
        items.append(CohortItem(str(path), str(target), str(segmentation) if segmentation else None))
    sources = [item.input for item in items] + [item.segmentation for item in items if item.segmentation]
    check_sidecars([item.output for item in items], sources)  # two outputs, one provenance .json; none over an input
    return items


def _cell(row: Sequence[str], column: Optional[int]) -> Optional[str]:
    """A CSV cell, stripped; None for a missing column or an empty cell."""
    if column is None or column >= len(row):
        return None
    return row[column].strip() or None


def _beside(table: Path, cell: str) -> Path:
    """A path from the CSV: relative ones are relative to the CSV's folder."""
    path = Path(cell)
    return path if path.is_absolute() else table.parent / path


ReconstructOne = Callable[[Path, Path, Optional[Path]], Optional[Sequence[str]]]  # returns the run's warnings (None: none)


def run_items(items: Sequence[CohortItem], reconstruct_one: ReconstructOne, log: Callable[[str], None] = print) -> list[CohortRow]:
    """Reconstruct each item whose output is not there yet; every failure becomes a row, never an exception."""
    rows = []
    for number, item in enumerate(items, 1):
        output = Path(item.output)
        if output.is_file():
            rows.append(CohortRow(item.input, item.output, 0.0, "skipped", "output exists"))
            log(f"[{number}/{len(items)}] {item.input}: skipped (output exists)")
            continue
        started = time.monotonic()
        warnings: Sequence[str] = ()
        try:
            warnings = reconstruct_one(Path(item.input), output, Path(item.segmentation) if item.segmentation else None) or ()
            status, message = "done", ""
        except XDiffusionError as error:
            status, message = "failed", " ".join(str(error).split())
        except Exception as error:  # noqa: BLE001 - one broken volume must not end the cohort
            status, message = "failed", f"internal error ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
            log(traceback.format_exc())
        seconds = round(time.monotonic() - started, 2)
        warnings = [" ".join(str(w).split()) for w in warnings]
        rows.append(CohortRow(item.input, item.output, seconds, status, message, WARNING_SEPARATOR.join(warnings)))
        log(f"[{number}/{len(items)}] {item.input}: {status} in {seconds:.1f} s{(' - ' + message) if message else ''}")
        for warning in warnings:
            log(f"[{number}/{len(items)}] {item.input}: warning: {warning}")
    return rows


def write_summary(rows: Sequence[CohortRow], path: Path) -> Path:
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(asdict(row) for row in rows)
    return path


def format_summary(rows: Sequence[CohortRow]) -> str:
    width = max([len("input")] + [len(Path(r.input).name) for r in rows])
    lines = [f"{'input':<{width}}  {'status':<8}  {'seconds':>8}  output"]
    for r in rows:
        note = f"  ({r.message})" if r.status == "failed" else (f"  ({r.warnings.count(WARNING_SEPARATOR) + 1} warning(s))" if r.warnings else "")
        lines.append(f"{Path(r.input).name:<{width}}  {r.status:<8}  {r.seconds:>8.1f}  {r.output}{note}")
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    lines.append(f"{len(rows)} volumes: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
                 f"{sum(r.seconds for r in rows):.1f} s of reconstruction")
    return "\n".join(lines)


def threads_per_process(processes_on_node: int) -> int:
    """CPU cores shared evenly among this node's processes (oversubscribed OpenMP threads slow everyone down)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes_on_node))


def run_cohort(source: str | os.PathLike, output_dir: str | os.PathLike, make_reconstructor: Callable[[object], ReconstructOne],
               log: Callable[[str], None] = print) -> tuple[list[CohortRow], Optional[Path]]:
    """Shard the cohort over accelerate's processes and return (all rows, summary path) on the main process
    ((own rows, None) elsewhere). ``make_reconstructor(state)`` builds the per-process reconstruct function (it loads
    the model once, on ``state.device``)."""
    import torch
    from accelerate import PartialState

    # no GPU (or `accelerate launch --cpu`): gloo over CPU processes, whatever launcher started them
    state = PartialState(cpu=not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true")
    output_dir = Path(output_dir)
    items = list_cohort(source, output_dir)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / PARTS_FOLDER).mkdir(exist_ok=True)
    state.wait_for_everyone()
    if state.device.type == "cpu":
        torch.set_num_threads(threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))))
    with state.split_between_processes(items) as mine:
        mine = list(mine)
        pending = any(not Path(item.output).is_file() for item in mine)  # a finished cohort loads no model
        reconstruct_one = make_reconstructor(state) if pending else (lambda source, output, segmentation: None)
        rows = run_items(mine, reconstruct_one, log=lambda line: log(f"[process {state.process_index}] {line}")) if mine else []
    part = output_dir / PARTS_FOLDER / f"rows-{state.process_index}.json"
    with atomic_output(part) as temporary:
        temporary.write_text(json.dumps([asdict(row) for row in rows]) + "\n")
    state.wait_for_everyone()
    if not state.is_main_process:
        return rows, None
    merged = {}
    for index in range(state.num_processes):
        for row in json.loads((output_dir / PARTS_FOLDER / f"rows-{index}.json").read_text(encoding="utf-8")):
            merged[row["input"]] = CohortRow(**row)
    order = [item.input for item in items]
    all_rows = [merged[name] for name in order if name in merged]
    summary = write_summary(all_rows, output_dir / SUMMARY_NAME)
    return all_rows, summary
