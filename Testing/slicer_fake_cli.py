"""A stand-in for `python -m xdiffusion.cli`, for the Slicer module's process tests (Testing/test_slicer_*.py).

It speaks the interface the module codes against, including what the library adds in issue 16 (warning events on
stderr, a JSON sidecar beside every output, `model-info --json` with `segments_tumours`, and `--segmentation-output`
refused with exit 2 when the model does not segment tumours) and `upsample` (issue 17: a new isotropic grid), and
it can be slow, ignore SIGTERM, or hide behind a launcher process, as Slicer's `PythonSlicer` does. The real CLI is
exercised by the same tests wherever it already has what they need. Behaviour comes from environment variables:

  FAKE_XDIFFUSION_LOG             append each command line here (one JSON list per line)
  FAKE_XDIFFUSION_SEGMENTS        "1": the model segments tumours (default "0", like the shipped model)
  FAKE_XDIFFUSION_STEP_S          seconds per progress step (default 0)
  FAKE_XDIFFUSION_STEPS           progress steps (default 3)
  FAKE_XDIFFUSION_WARNING         a warning to report, on stderr and in the sidecars
  FAKE_XDIFFUSION_IGNORE_SIGTERM  "1": ignore SIGTERM (only a kill ends it)
  FAKE_XDIFFUSION_LAUNCHER        "1": start the real work in a grandchild in its own session and wait for it
  FAKE_XDIFFUSION_PID_FILE        write the pid of the process doing the work here
  FAKE_XDIFFUSION_NO_MODEL_INFO   "1": no `model-info` command (a library from before issue 16)
  FAKE_XDIFFUSION_LABELS          "1": the model is conditioned on input labels (default "0": `--input-segmentation`
                                  is refused with exit 2, as the shipped model refuses it)
  FAKE_XDIFFUSION_KEEP_LABELS     copy the `--input-segmentation` file here, for the test to read
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"FAKE_XDIFFUSION_{name}", default)


def sidecar(output: Path, warnings: list, method: str = "xdiffusion", labels_from: Optional[str] = None) -> None:
    name = output.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    record = {"GeneratedNotMeasured": True, "Description": "fake reconstruction for tests", "Method": method,
              "Model": "fake model", "Sampling": {"views": 2, "steps": 8}, "Input": "input.nrrd", "Warnings": warnings,
              "Software": "fake-cli", "Created": "2026-01-01T00:00:00Z"}
    if labels_from is not None:
        record["LabelsFrom"] = labels_from
    output.with_name(name + ".json").write_text(json.dumps(record))


def reconstruct(args) -> int:
    import numpy as np
    import SimpleITK as sitk

    segments = env("SEGMENTS", "0") == "1"
    if args.segmentation_output and not segments and not args.input_segmentation:
        print("error: this model does not segment tumours; drop --segmentation-output", file=sys.stderr)
        return 2
    if args.input_segmentation:
        if env("LABELS", "0") != "1" and not args.segmentation_output:
            print("error: --input-segmentation: this method or model does not draw its image from input labels, so they "
                  "only give the tumour labels: add --segmentation-output SEG", file=sys.stderr)
            return 2
        if env("KEEP_LABELS"):
            Path(env("KEEP_LABELS")).write_bytes(Path(args.input_segmentation).read_bytes())
    warnings = [env("WARNING")] if env("WARNING") else []
    steps = int(env("STEPS", "3"))
    for step in range(steps):
        time.sleep(float(env("STEP_S", "0")))
        print(json.dumps({"progress": (step + 1) / (steps + 1), "eta_s": steps - step, "stage": f"view {step + 1}/{steps}"}),
              file=sys.stderr, flush=True)
        if step == 0:
            for message in warnings:
                print(json.dumps({"event": "warning", "message": message}), file=sys.stderr, flush=True)
    image = sitk.ReadImage(args.input)
    if image.GetSize()[2] == 1 and args.slice_index:
        print("error: --slice-index does not apply to a single 2D slice (use --slice-position)", file=sys.stderr)
        return 2
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    outputs = [(args.output, array + 1.0)]
    if args.uncertainty_output:
        outputs.append((args.uncertainty_output, np.abs(array) * 0.01))
    if args.segmentation_output:
        labels = np.zeros(array.shape, np.uint8)
        k, j, i = (n // 2 for n in array.shape)
        labels[max(k - 1, 0):k + 2, j - 2:j + 2, i - 2:i + 2] = 2
        outputs.append((args.segmentation_output, labels))
    tapered = "the input slices' labels, tapered" if args.input_segmentation else "the model"
    for path, values in outputs:
        written = sitk.GetImageFromArray(values)
        written.CopyInformation(image)
        sitk.WriteImage(written, path)
        sidecar(Path(path), warnings, labels_from=tapered if path == args.segmentation_output else None)
    print(json.dumps({"progress": 1.0, "eta_s": 0, "stage": "done"}), file=sys.stderr, flush=True)
    print(f"wrote {args.output} (generated; synthetic, not for diagnosis)", file=sys.stderr)
    return 0


def upsample(args) -> int:
    """Each thick slice repeated over its slab onto an isotropic grid at the in-plane spacing, spanning the slabs'
    outer edges (the real command's grid rule, with nearest-neighbour values)."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(args.input)
    spacing = np.asarray(image.GetSpacing())
    axis = int(np.argmax(spacing))
    if spacing[axis] <= 1.5 * max(spacing[a] for a in range(3) if a != axis):
        print(f"error: {args.input} is already near-isotropic; upsample takes thick slices only", file=sys.stderr)
        return 2
    fine = float(min(spacing[a] for a in range(3) if a != axis))
    factor = int(round(spacing[axis] / fine))
    steps = int(env("STEPS", "3"))
    for step in range(steps):
        time.sleep(float(env("STEP_S", "0")))
        print(json.dumps({"progress": (step + 1) / (steps + 1), "eta_s": steps - step, "stage": "bspline resampling"}),
              file=sys.stderr, flush=True)
    array = np.repeat(sitk.GetArrayFromImage(image).astype(np.float32), factor, axis=2 - axis)  # sitk arrays are (k, j, i)
    written = sitk.GetImageFromArray(array)
    new_spacing = spacing.copy()
    new_spacing[axis] = spacing[axis] / factor
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    shift = np.zeros(3)
    shift[axis] = (new_spacing[axis] - spacing[axis]) / 2.0  # first fine slice: half a fine voxel in from the slab edge
    written.SetSpacing([float(v) for v in new_spacing])
    written.SetOrigin([float(v) for v in np.asarray(image.GetOrigin()) + direction @ shift])
    written.SetDirection(image.GetDirection())
    sitk.WriteImage(written, args.output)
    warnings = [env("WARNING")] if env("WARNING") else []
    sidecar(Path(args.output), warnings, args.method or "learned")
    print(json.dumps({"progress": 1.0, "eta_s": 0, "stage": "done"}), file=sys.stderr, flush=True)
    return 0


def main() -> int:
    if env("LOG"):
        with open(env("LOG"), "a", encoding="utf-8") as stream:
            stream.write(json.dumps(sys.argv[1:]) + "\n")
    if env("LAUNCHER") == "1" and not os.environ.get("FAKE_XDIFFUSION_CHILD"):
        child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], env={**os.environ, "FAKE_XDIFFUSION_CHILD": "1"},
                                 start_new_session=True)  # out of the launcher's process group: only a tree kill reaches it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a launcher that does not pass SIGTERM on
        return child.wait()
    if env("PID_FILE"):
        Path(env("PID_FILE")).write_text(str(os.getpid()))
    if env("IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (print("error: cancelled; no output was written", file=sys.stderr),
                                                   sys.exit(130)))
    parser = argparse.ArgumentParser(prog="xdiffusion")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("reconstruct")
    rec.add_argument("input")
    rec.add_argument("-o", "--output", required=True)
    for flag in ("--plane", "--slice-position", "--method", "--progress", "--preset", "--views", "--steps", "--device", "--model",
                 "--segmentation-output", "--uncertainty-output", "--input-segmentation"):
        rec.add_argument(flag)
    rec.add_argument("--slice-index", nargs="+")
    up = commands.add_parser("upsample")
    up.add_argument("input")
    up.add_argument("-o", "--output", required=True)
    for flag in ("--method", "--progress", "--device", "--model", "--output-spacing"):
        up.add_argument(flag)
    info = commands.add_parser("model-info")
    info.add_argument("--model")
    info.add_argument("--json", action="store_true")
    evaluate = commands.add_parser("evaluate")
    for flag in ("--reference", "--prediction", "--reference-segmentation", "--prediction-segmentation", "--uncertainty"):
        evaluate.add_argument(flag)
    evaluate.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "model-info" and env("NO_MODEL_INFO") == "1":
        print("error: argument command: invalid choice: 'model-info' (see xdiffusion --help)", file=sys.stderr)
        return 2
    if args.command == "model-info":
        print(json.dumps({"name": "fake model", "segments_tumours": env("SEGMENTS", "0") == "1"}))
        return 0
    if args.command == "evaluate":
        time.sleep(float(env("STEP_S", "0")) * int(env("STEPS", "3")))
        print(json.dumps({"psnr": 30.0, "dice_wt": None}))
        return 0
    if args.command == "upsample":
        return upsample(args)
    return reconstruct(args)


if __name__ == "__main__":
    sys.exit(main())
