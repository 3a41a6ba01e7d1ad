"""The provenance sidecar: a JSON file beside every generated volume (reconstruct, reconstruct-cohort, demo) saying
that it is a guess, what made it and from what; written with the volumes as one unit; refused where it would
overwrite the input or another output."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oriented_volume, smooth_head
from fuzz_helpers import assert_refused, listing, run_main, save_tiny_model
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from test_io import write_dicom_series

from xdiffusion import __version__
from xdiffusion.cohort import SUMMARY_NAME, WARNING_SEPARATOR
from xdiffusion.errors import InputError
from xdiffusion.io import read_volume, write_volume
from xdiffusion.provenance import sidecar_path

KEYS = ["GeneratedNotMeasured", "Description", "Content", "Method", "Model", "Sampling", "Seed", "Template", "Input",
        "Warnings", "Software", "Created"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("provenance") / "tiny", default_sampling={"views": 2, "steps": 1})


@pytest.fixture
def volume_path(tmp_path) -> Path:
    array = (smooth_head((20, 22, 18)) * 3).astype(np.int16)
    return write_volume(oriented_volume(array, np.diag([-1.0, -1.0, 1.0]), spacing=(4.0, 4.0, 4.0)), tmp_path / "input.nii.gz")


def read_sidecar(path: Path) -> dict:
    return json.loads(sidecar_path(path).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name, expected", [("recon.nii.gz", "recon.json"), ("recon.NII", "recon.json"), ("a.b.nrrd", "a.b.json"),
                                            ("x.mha", "x.json"), ("x.mhd", "x.json"), ("x.nhdr", "x.json"), ("x.vtk", "x.vtk.json")])
def test_sidecar_path_strips_the_volume_suffix(name, expected):
    assert sidecar_path(Path("out") / name) == Path("out") / expected


def test_every_output_of_the_model_gets_a_sidecar(tmp_path, model_dir, volume_path):
    out, seg, unc = tmp_path / "out.nrrd", tmp_path / "seg.nii.gz", tmp_path / "unc.mha"
    started = datetime.now(timezone.utc)
    code, _, err = run_main(["reconstruct", volume_path, "-o", out, "--segmentation-output", seg, "--uncertainty-output", unc,
                             "--model", model_dir, "--plane", "coronal", "--slice-index", "5", "15", "--seed", "3", "--quiet"])
    assert code == 0 and err == "", err
    card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    for path, content in ((out, "image"), (seg, "tumour labels"), (unc, "uncertainty")):
        sidecar = read_sidecar(path)
        extra = {"uncertainty": ["UncertaintyAUROC"], "tumour labels": ["LabelsFrom"]}.get(content, [])
        assert list(sidecar) == KEYS + extra
        assert sidecar.get("LabelsFrom") == ("the model" if content == "tumour labels" else None)
        assert sidecar["GeneratedNotMeasured"] is True and "not a measurement" in sidecar["Description"]
        assert sidecar["Content"] == content and sidecar["Method"] == "xdiffusion"
        assert sidecar["Model"] == {"path": str(model_dir.absolute()), "id": "tiny", "sha256": card["sha256"]}
        assert sidecar["Sampling"] == {"views": 2, "steps": 1, "guidance": 1.0, "solver": "dpmsolver++", "strength": 1.0,
                                       "prior": None, "seed": 3, "samples": 1, "coherent": False,
                                       "fusion": "mean", "precision": "float32"}  # the card's views and steps, the CLI's other defaults
        assert sidecar["Seed"] == 3 and sidecar["Template"] is None and sidecar["Warnings"] == []
        assert sidecar["Input"] == {"path": str(volume_path.absolute()), "plane": "coronal", "axis": 1, "slice_indices": [5, 15],
                                    "slice_position": None, "segmentation": None}
        assert sidecar["Software"] == {"name": "xdiffusion", "version": __version__}
        assert sidecar.get("UncertaintyAUROC") is None  # the tiny model's card has no measured AUROC
        created = datetime.fromisoformat(sidecar["Created"])
        assert created.utcoffset() == timedelta(0) and started - timedelta(seconds=2) <= created <= datetime.now(timezone.utc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz", "out.json", "out.nrrd", "seg.json", "seg.nii.gz",
                                                          "unc.json", "unc.mha"]


def test_the_atlas_prior_and_the_baselines_are_recorded(tmp_path, model_dir, volume_path):
    code, _, err = run_main(["reconstruct", volume_path, "-o", tmp_path / "prior.nii", "--model", model_dir, "--strength", "0.5",
                             "--prior", "atlas", "--quiet"])
    assert code == 0, err
    sidecar = read_sidecar(tmp_path / "prior.nii")
    assert sidecar["Sampling"]["prior"] == "atlas" and sidecar["Sampling"]["strength"] == 0.5
    assert sidecar["Template"].endswith("icbm2009c_t1_brain_2mm.nii.gz")
    for method in ("extrude", "atlas"):
        code, _, err = run_main(["reconstruct", volume_path, "-o", tmp_path / f"{method}.nii.gz", "--method", method, "--quiet"])
        assert code == 0, err
        sidecar = read_sidecar(tmp_path / f"{method}.nii.gz")
        assert sidecar["Method"] == method and sidecar["Model"] is None and sidecar["Sampling"] is None and sidecar["Seed"] is None
        assert sidecar["Content"] == "image" and sidecar["Input"]["slice_indices"] == [9] and sidecar["Input"]["plane"] == "axial"
        assert (sidecar["Template"] is not None) == (method == "atlas")


def test_the_view_fusion_is_recorded_and_a_model_card_can_set_it(tmp_path, model_dir, volume_path):
    code, _, err = run_main(["reconstruct", volume_path, "-o", tmp_path / "in_plane.nii.gz", "--model", model_dir,
                             "--fusion", "in-plane", "--quiet"])
    assert code == 0, err
    assert read_sidecar(tmp_path / "in_plane.nii.gz")["Sampling"]["fusion"] == "in-plane"
    in_plane_card = save_tiny_model(tmp_path / "in_plane_card", default_sampling={"views": 2, "steps": 1, "fusion": "in-plane"})
    for options, expected in (([], "in-plane"), (["--fusion", "mean"], "mean")):  # an explicit option wins over the card
        output = tmp_path / f"card_{expected}.nii.gz"
        code, _, err = run_main(["reconstruct", volume_path, "-o", output, "--model", in_plane_card, "--quiet", *options])
        assert code == 0, err
        assert read_sidecar(output)["Sampling"]["fusion"] == expected
    assert_refused(["reconstruct", volume_path, "-o", tmp_path / "bad.nii.gz", "--model", model_dir, "--fusion", "median"],
                   tmp_path, fragments=["--fusion"])


def test_a_2d_input_records_its_slice_position(tmp_path):
    image = sitk.GetImageFromArray((smooth_head((24, 24, 3))[:, :, 1] * 2).astype(np.float32))
    source = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(source))
    code, _, err = run_main(["reconstruct", source, "-o", tmp_path / "out.nii.gz", "--method", "extrude", "--plane", "sagittal",
                             "--slice-position", "0.25", "--quiet"])
    assert code == 0, err
    recorded = read_sidecar(tmp_path / "out.nii.gz")["Input"]
    assert recorded["slice_position"] == 0.25 and recorded["plane"] == "sagittal" and recorded["axis"] == 2


def test_a_sidecar_that_would_overwrite_the_input_or_another_output_is_refused(tmp_path, model_dir, volume_path):
    line = assert_refused(["reconstruct", volume_path, "-o", tmp_path / "a.nii.gz", "--segmentation-output", tmp_path / "a.nrrd",
                           "--model", model_dir], tmp_path, fragments=["sidecar", "a.json"])
    assert "would overwrite the sidecar of" in line
    series = tmp_path / "scan.json"  # a DICOM folder whose name is the sidecar's
    write_dicom_series(series, read_volume(volume_path), "1.2.826.0.1.3680043.2.1125.91")
    assert_refused(["reconstruct", series, "-o", tmp_path / "scan.nrrd", "--method", "extrude"], tmp_path,
                   fragments=["sidecar", "would overwrite the input"])
    (tmp_path / "folder.json").mkdir()
    assert_refused(["reconstruct", volume_path, "-o", tmp_path / "folder.mha", "--method", "extrude"], tmp_path,
                   fragments=["sidecar", "is a folder"])


def test_a_failed_sidecar_write_leaves_the_old_files_and_no_temporary(tmp_path, volume_path, monkeypatch):
    """Volumes and sidecars are one unit: the sidecar failing (disk full) after the volume was written to its
    temporary leaves the old output untouched and nothing new."""
    from xdiffusion import io

    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"old volume")

    def disk_full(document, target, temporary):
        temporary.write_text("{\"Generated")  # half written, then the disk is full
        raise InputError(f"{target}: cannot write (No space left on device)")

    monkeypatch.setattr(io, "_write_json", disk_full)
    assert_refused(["reconstruct", volume_path, "-o", output, "--method", "extrude", "--quiet"], tmp_path, fragments=["No space left"])
    assert output.read_bytes() == b"old volume"


def test_cohort_outputs_get_sidecars_and_the_summary_lists_warnings(tmp_path, model_dir):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for number in range(2):
        array = (smooth_head((16, 18, 14), seed=number) * 3).astype(np.int16)
        array[:, :, 2] = 0 if number == 1 else array[:, :, 2]  # case1: an empty slice among the chosen ones
        write_volume(oriented_volume(array, np.eye(3), spacing=(4.0, 4.0, 4.0)), cohort / f"case{number}.nii.gz")
    out = tmp_path / "out"
    assert main_ok(["reconstruct-cohort", cohort, "-o", out, "--model", model_dir, "--slice-index", "2", "7",
                    "--strength", "0.5", "--prior", "atlas"])
    with open(out / SUMMARY_NAME, newline="") as handle:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(handle)}
    left_out = {name: [w for w in row["warnings"].split(WARNING_SEPARATOR) if "left out" in w] for name, row in rows.items()}
    assert left_out["case0.nii.gz"] == [] and len(left_out["case1.nii.gz"]) == 1 and "input slice 2" in left_out["case1.nii.gz"][0]
    for name in ("case0", "case1"):
        sidecar = read_sidecar(out / f"{name}_xdiffusion.nii.gz")
        assert sidecar["Input"]["path"] == str((cohort / f"{name}.nii.gz").absolute()) and sidecar["Model"]["id"] == "tiny"
        assert sidecar["Sampling"]["prior"] == "atlas" and sidecar["Input"]["slice_indices"] == [2, 7]
        assert WARNING_SEPARATOR.join(sidecar["Warnings"]) == rows[f"{name}.nii.gz"]["warnings"]


def test_cohort_outputs_sharing_a_sidecar_are_refused(tmp_path, volume_path):
    table = tmp_path / "cohort.csv"
    table.write_text(f"input,output\n{volume_path},a.nii.gz\n{volume_path},a.nrrd\n", encoding="utf-8")
    assert_refused(["reconstruct-cohort", table, "-o", tmp_path / "out", "--method", "extrude"], tmp_path, fragments=["sidecar"])


def main_ok(argv) -> bool:
    code, _, err = run_main(argv)
    assert code == 0, err
    return True


def test_nothing_new_but_outputs_and_sidecars(tmp_path, volume_path):
    before = listing(tmp_path)
    assert main_ok(["reconstruct", volume_path, "-o", tmp_path / "x.mha", "--method", "interpolate", "--slice-index", "4", "12"])
    assert listing(tmp_path) - before == {str(tmp_path / "x.mha"), str(tmp_path / "x.json")}


def test_the_uncertainty_map_says_how_well_it_ranks_errors(tmp_path, model_dir, volume_path):
    """The measured AUROC goes wherever the map is offered: its sidecar and the CLI's closing note."""
    card_path = model_dir / "model_card.json"
    original = card_path.read_text(encoding="utf-8")
    card = json.loads(original)
    card["evaluation"] = {"uncertainty_auroc": {"mean": 0.532, "std": 0.03, "n": 36}}
    card_path.write_text(json.dumps(card), encoding="utf-8")
    try:
        code, _, err = run_main(["reconstruct", volume_path, "-o", tmp_path / "out.nii.gz", "--uncertainty-output", tmp_path / "unc.nii.gz",
                                 "--model", model_dir])
    finally:
        card_path.write_text(original, encoding="utf-8")
    assert code == 0, err
    assert read_sidecar(tmp_path / "unc.nii.gz")["UncertaintyAUROC"] == 0.532
    assert "how well it ranks errors: AUROC 0.53 on held-out data, 0.5 = chance" in err
