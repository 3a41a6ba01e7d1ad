"""Files in, files out: `xdiffusion reconstruct` and every volume of `reconstruct-cohort` through one code path.

`check_outputs` refuses a bad request before any work (no torch loads for it); `reconstruct_file` reads the input,
takes its slice(s), reads the input slices' labels, runs `reconstruct.reconstruct` and writes the volume, its
segmentation and uncertainty where asked, each with its provenance sidecar, as one unit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .errors import InputError

if TYPE_CHECKING:
    from .reconstruct import Reconstruction

# the model, loaded once the input has been read (a bad file fails before torch loads): (pipeline, sampling, modality, folder)
LoadModel = Callable[[], "tuple[Any, dict, str, Path]"]


def check_output(path: Optional[str | os.PathLike], inputs: Sequence[Path], flag: str) -> Optional[Path]:
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


def check_outputs(source: str | os.PathLike, output: str | os.PathLike, segmentation_output: Optional[str | os.PathLike],
                  uncertainty_output: Optional[str | os.PathLike], input_segmentation: Optional[str | os.PathLike],
                  method: str, model: Optional[str], atlas: Optional[str]) -> tuple[Path, Optional[Path], Optional[Path]]:
    """`xdiffusion reconstruct`'s request checked before any work: the outputs (distinct, writable, no input
    overwritten, sidecars free), input labels only where they change an output, a segmentation only where labels are
    given or the model draws its own, the atlas choice. Returns the three output paths."""
    from .provenance import check_sidecars

    sources = [Path(source)] + ([Path(input_segmentation)] if input_segmentation else [])
    outputs = [Path(p) for p in (output, segmentation_output, uncertainty_output) if p]
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise InputError("the output, segmentation and uncertainty files must be different files")
    if input_segmentation and not segmentation_output:
        from .input_labels import labels_read_for_image

        if not labels_read_for_image(method, model):
            raise InputError("--input-segmentation: this method or model does not draw its image from input labels, so they "
                             "only give the tumour labels: add --segmentation-output SEG, or drop --input-segmentation")
    if segmentation_output and method == "xdiffusion" and not input_segmentation:
        from .model_card import check_segments_tumours

        check_segments_tumours(model, "--segmentation-output")
    checked = (check_output(output, sources, "-o"), check_output(segmentation_output, sources, "--segmentation-output"),
               check_output(uncertainty_output, sources, "--uncertainty-output"))
    check_sidecars(list(checked), sources)  # each output's provenance .json
    if method != "xdiffusion" and checked[2]:
        raise InputError(f"--method {method} makes no uncertainty map; drop --uncertainty-output")
    if method != "xdiffusion" and checked[1] and not input_segmentation:
        raise InputError(f"--method {method} draws no tumour labels of its own: give --input-segmentation (the input "
                         f"slice's labels, tapered into 3D) or drop --segmentation-output")
    if atlas is not None and method in ("extrude", "interpolate"):
        raise InputError(f"--atlas applies to --method atlas and to the xdiffusion atlas prior, not to --method {method}")
    if atlas is not None:
        from .atlas_templates import check_template_choice

        check_template_choice(atlas)
    return checked


def reconstruct_file(source: str | os.PathLike, output: str | os.PathLike, segmentation_output: Optional[str | os.PathLike] = None,
                     uncertainty_output: Optional[str | os.PathLike] = None, input_segmentation: Optional[str | os.PathLike] = None,
                     method: str = "xdiffusion", load_model: Optional[LoadModel] = None, plane: Optional[str] = None,
                     slice_index: Optional[Sequence[int]] = None, slice_position: Optional[float] = None,
                     atlas: Optional[str] = None, progress=None, warn: Optional[Callable[[str], None]] = None) -> Reconstruction:
    """One input file reconstructed and written: its slice(s) (default the middle axial one; a 2D file at
    ``slice_position`` of its own depth, default the middle), its input slices' labels from ``input_segmentation``,
    the method (``load_model`` gives the model for `xdiffusion`), then the volume and the segmentation and
    uncertainty where a path is given, each with its provenance sidecar, written as one unit. Each of the run's
    warnings goes to ``warn`` before anything is written."""
    from .io import read_image
    from .provenance import write_reconstruction

    source = Path(source)
    volume = read_image(source)
    from .reconstruct import reconstruct, select_slices, single_slice_input  # after reading: a bad file fails fast

    if volume.is_slice:
        if slice_index:
            raise InputError("--slice-index does not apply to a single 2D slice (use --slice-position)")
        inputs = single_slice_input(volume, plane, 0.5 if slice_position is None else slice_position)
    else:
        if slice_position is not None:
            raise InputError("--slice-position applies to a single 2D slice; for a volume use --slice-index")
        inputs = select_slices(volume, plane or "axial", slice_index)
    del volume  # only the chosen slices and the grid go further
    input_labels = None
    if input_segmentation:
        from .input_labels import read_input_labels

        input_labels = read_input_labels(input_segmentation, inputs)
    pipeline, sampling, modality, model_dir = None, {}, None, None
    if method == "xdiffusion":
        pipeline, sampling, modality, model_dir = load_model()
    result = reconstruct(inputs, method, pipeline, modality, progress, atlas=atlas, input_labels=input_labels, **sampling)
    for message in result.warnings:  # a fallback changes what the output is worth
        if warn is not None:
            warn(message)
    write_reconstruction(result, inputs, output, segmentation_output, uncertainty_output, source, model_dir,
                         input_segmentation, input_labels)
    return result
