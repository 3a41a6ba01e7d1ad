"""benchmarks/upsample_benchmark.py on a small synthetic subject: the simulated stack and its truth, the scores, the
ECLARE cap, the verdict and the table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import smooth_head
from xdiffusion.io import Geometry, Volume
from xdiffusion.upsample import isotropic_grid, upsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import upsample_benchmark as bench  # noqa: E402


def subject(spacing=(1.0, 1.0, 1.0)) -> tuple[Volume, Volume]:
    array = smooth_head((30, 28, 33), seed=5)
    geometry = Geometry(array.shape, spacing, (4.0, -6.0, 2.0), np.diag([1.0, -1.0, 1.0]))
    return Volume(array, geometry), Volume((array > 0).astype(np.uint8), geometry)


def test_the_case_cuts_whole_centred_slabs_and_its_truth_is_the_upsampling_grid():
    image, mask = subject()
    case = bench.Case("toy", "axial", 6, image, mask)
    assert case.axis == 2 and case.voxels_per_slab == 6 and case.stack.count == 5  # 33 slices: 5 slabs, 3 left over
    assert case.truth.geometry.shape == (30, 28, 30)
    np.testing.assert_array_equal(case.truth.array, image.array[:, :, 1:31])  # one cut below, two above
    assert case.truth.geometry.same_as(isotropic_grid(case.stack), atol=1e-9)  # a 1 mm truth is the default grid
    coronal = bench.Case("toy", "coronal", 5, image, mask)
    assert coronal.axis == 1 and coronal.stack.thickness_mm == 5.0 and coronal.truth.geometry.shape == (30, 25, 33)


def test_scores_see_the_projection_and_a_capped_eclare_is_reported_not_scored(tmp_path, monkeypatch):
    image, mask = subject(spacing=(0.9, 0.9, 1.0))
    case = bench.Case("toy", "axial", 5, image, mask)
    raw = bench.score(case, upsample(case.stack, "bspline", grid=case.truth.geometry, slab_projection=False).image, 1.0)
    projected = bench.score(case, upsample(case.stack, "bspline", grid=case.truth.geometry).image, 1.0)
    assert projected["slab_rms_pct"] < 1e-3 < raw["slab_rms_pct"]
    assert projected["psnr"] > raw["psnr"] and {"psnr_brain", "ssim", "sharpness"} <= set(projected)
    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/sh\nsleep 30\n")
    sleeper.chmod(0o755)
    result = bench.run_eclare(case, tmp_path, sleeper, cap_s=1.0)
    assert result["status"] == "capped" and 1.0 <= result["seconds"] < 10 and "psnr" not in result
    assert bench.run_eclare(case, tmp_path, sleeper, cap_s=1.0)["seconds"] == result["seconds"]  # cached, not rerun
    (tmp_path / "other").mkdir()
    assert bench.run_eclare(case, tmp_path / "other", tmp_path / "missing", 1.0)["status"] == "not installed"


def test_the_verdict_needs_every_criterion_on_every_case_at_6_mm_and_the_table_says_so():
    def case(subject_id, gain, ssim=0.91, sharpness=1.0, slab_rms_pct=0.0):
        methods = {"bspline": {"psnr": 30.0, "psnr_brain": 20.0, "ssim": 0.9, "sharpness": 0.8, "slab_rms_pct": 0.0, "seconds": 1.0},
                   "learned": {"psnr": 30.0, "psnr_brain": 20.0 + gain, "ssim": ssim, "sharpness": sharpness,
                               "slab_rms_pct": slab_rms_pct, "seconds": 9.0},
                   "xdiffusion": {"status": "not run", "detail": "only at --xdiffusion-thickness (CPU cost)"},
                   "eclare": {"status": "capped", "seconds": 1800.0, "detail": "1% of patches"}}
        return {"subject": subject_id, "plane": "axial", "thickness_nominal_mm": 6, "slab_thickness_mm": 6.0, "slabs": 25, "methods": methods}

    assert bench.verdict([case("a", 2.5), case("b", 2.1)])["met"] == {"learned": True}
    failing = bench.verdict([case("a", 2.5), case("b", 1.9)])
    assert failing["met"] == {"learned": False} and failing["cases"]["learned"]["b axial"]["gain_db"] == 1.9
    for spoiler in ({"ssim": 0.9}, {"sharpness": 1.3}, {"sharpness": 0.85}, {"slab_rms_pct": 2.0}):  # 2 % RMS: 34 dB
        assert bench.verdict([case("a", 2.5, **spoiler)])["met"] == {"learned": False}, spoiler
    assert bench.slab_psnr_db({"slab_rms_pct": 1.0}) == 40.0
    assert bench.verdict([])["met"] == {}
    record = {"when": "now", "wall_s": 60.0, "cases": [case("a", -0.5)], "verdict": bench.verdict([case("a", -0.5)]),
              "machine": {"cpu": "cpu", "cores": 2, "torch_threads": 1, "gpu": None}}
    table = bench.markdown(record)
    assert "| a | axial | 6.00 (25) | learned | 30.00 | 19.50 |" in table and "| xdiffusion |" not in table
    assert "| eclare | capped: 1% of patches |" in table and "- learned: not met" in table and "a axial -0.50 dB" in table


def test_recorded_xdiffusion_rows_are_reused_only_for_the_same_model_and_sampling(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(bench, "WORK", tmp_path)
    image, mask = subject()
    case = bench.Case("toy", "axial", 6, image, mask)
    sampling = {"views": 4, "steps": 12, "seed": 0}
    recorded = {"psnr": 31.0, "psnr_brain": 21.0, "ssim": 0.9, "sharpness": 0.8, "slab_rms_pct": 0.0, "seconds": 300.0}
    earlier = {"when": "earlier", "model": "model-dir", "sampling": sampling,
               "cases": [{**case.describe(), "methods": {"xdiffusion": recorded}}]}
    args = SimpleNamespace(learned_net=None, learned_thickness=[], xdiffusion_thickness=[6], reuse_xdiffusion=True,
                           earlier=earlier, model_dir="model-dir", eclare_case=[])
    unusable = object()  # a pipeline that is never called: the row is carried
    rows = bench.run_case(case, args, unusable, sampling)
    assert rows["xdiffusion"] == {**recorded, "carried_from": "earlier"} and "psnr" in rows["bspline"]
    record = {"when": "now", "wall_s": 1.0, "cases": [{**case.describe(), "methods": rows}], "verdict": bench.verdict([]),
              "machine": {"cpu": "cpu", "cores": 2, "torch_threads": 1, "gpu": None}}
    assert "xdiffusion rows: recorded by the run of earlier" in bench.markdown(record)
    args.model_dir = "another-model"
    with pytest.raises((AttributeError, TypeError)):  # another model's rows are not reused: it runs the pipeline
        bench.run_case(case, args, unusable, sampling)
