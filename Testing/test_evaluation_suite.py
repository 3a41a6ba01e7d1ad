"""The evaluation suite and report end to end on a tiny model, the atlas baseline, and the uncertainty metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import oriented_volume, smooth_head
from model_fixtures import single_thread  # noqa: F401 (autouse fixture: one torch thread)
from test_pipeline import save_tiny_model
from xdiffusion.atlas import atlas_reconstruct, intensity_lookup
from xdiffusion.evaluate import auroc, uncertainty_ranking
from xdiffusion.io import Volume
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.reconstruct import reconstruct, select_slices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import evaluation_suite as suite  # noqa: E402
import make_report  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", views=2, steps=2)


def synthetic_cases() -> dict[str, suite.Case]:
    """A 20 x 22 x 18 head on 4 mm voxels, healthy and with a synthetic tumour."""
    image = oriented_volume(smooth_head((20, 22, 18), seed=3), np.eye(3), spacing=(4.0, 4.0, 4.0), origin=(-40.0, -44.0, -36.0))
    mask = image.array > 0
    seed, painted, labels = suite.crossing_tumours(image, mask, "t1", 1)[0]  # one the middle slices see, as the suite's
    empty = image.with_array(np.zeros(image.geometry.shape, dtype=np.uint8))
    return {"healthy": suite.Case("healthy", image, mask, empty, "t1"),
            "tumour0": suite.Case("tumour0", painted, mask, labels, "t1", tumour_seed=seed)}


def test_auroc_on_constructed_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5  # ties count a half
    assert auroc([1, 2], [1, 1]) is None


def test_uncertainty_ranking_rewards_a_map_that_tracks_the_error():
    reference = oriented_volume(smooth_head((16, 16, 16)), np.eye(3))
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.0, 1.0, reference.geometry.shape).astype(np.float32)
    prediction = reference.with_array(reference.array - 10.0 * spread)  # below the reference: no clipping
    good = uncertainty_ranking(reference, prediction, reference.with_array(spread))
    assert good["uncertainty_spearman"] > 0.95 and good["uncertainty_auroc"] > 0.95
    bad = uncertainty_ranking(reference, prediction, reference.with_array(-spread))
    assert bad["uncertainty_auroc"] < 0.05
    noise = uncertainty_ranking(reference, prediction, reference.with_array(rng.uniform(size=spread.shape)))
    assert abs(noise["uncertainty_auroc"] - 0.5) < 0.05


def test_atlas_registration_beats_the_unregistered_template():
    """The template is a shifted, scaled, contrast-changed copy of the target: registering the input slice to it must
    bring the whole guessed volume closer to the truth than the template as it was placed."""
    target = oriented_volume(smooth_head((48, 52, 24), seed=1), np.eye(3), spacing=(2.0, 2.0, 2.0))
    zoom = np.array([[1.12, 0.05, 0], [0.0, 0.92, 0], [0, 0, 1]])
    centre = (np.asarray(target.geometry.shape) - 1) / 2.0
    moved = ndimage.affine_transform(target.array, zoom, offset=centre - zoom @ centre + np.array([4.0, -3.0, 0.0]), order=1)
    template = target.with_array((0.5 * moved + 30.0 * (moved > 0)).astype(np.float32))
    inputs = select_slices(target, "axial")
    registered = atlas_reconstruct(inputs, template)
    unregistered = atlas_reconstruct(inputs, template, register=False)
    error = lambda guess: float(np.mean((guess - target.array) ** 2))  # noqa: E731
    assert error(registered) < 0.6 * error(unregistered)
    assert registered.shape == target.geometry.shape
    np.testing.assert_array_equal(registered, atlas_reconstruct(inputs, template))  # a rerun gives the same volume


def test_atlas_method_through_reconstruct_pastes_the_input(tmp_path):
    target = oriented_volume((smooth_head((24, 26, 20)) * 3).astype(np.int16), np.diag([-1.0, -1.0, 1.0]), spacing=(4.0, 4.0, 4.0))
    result = reconstruct(select_slices(target, "coronal", [8, 14]), "atlas")
    assert result.image.array.dtype == np.int16 and result.image.geometry.same_as(target.geometry)
    np.testing.assert_array_equal(result.image.array[:, [8, 14], :], target.array[:, [8, 14], :])
    assert "atlas" in result.image.metadata["description"]


def test_intensity_lookup_can_invert_a_contrast():
    template = np.linspace(0, 100, 1000)
    x, y = intensity_lookup(template, np.where(template > 0, 200.0 - template, 0.0))
    assert np.interp(20.0, x, y) > np.interp(80.0, x, y)


def test_suite_and_report_end_to_end_on_a_tiny_model(tmp_path, model_dir):
    pipeline = XDiffusionPipeline.from_pretrained(model_dir)
    defaults = {"views": 2, "steps": 2, "guidance": 1.0, "solver": "dpmsolver++", "strength": 0.5, "prior": "atlas"}
    grid = suite.GRIDS["quick"]
    cases = synthetic_cases()
    logged = []
    summary = suite.run_suite(grid, cases, pipeline, defaults, "tiny", tmp_path / "evaluation", log=logged.append)
    assert summary["made"] == summary["planned"] > 12 and summary["reused"] == 0
    records = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "evaluation" / "runs").glob("*.json")]
    assert len(records) == summary["made"] and all("metrics" in r for r in records), [r.get("error") for r in records]
    methods = {r["run"]["method"] for r in records}
    assert methods == {"xdiffusion", "pure", "official", "atlas", "extrude", "interpolate"}
    official = [r for r in records if r["run"]["method"] == "official"]
    assert all(r["run"]["sampling"]["steps"] == 50 and r["run"]["sampling"]["guidance"] == 7.5 for r in official)
    pure = [r for r in records if r["run"]["method"] == "pure"]
    assert pure and all(r["run"]["sampling"]["strength"] == 1.0 for r in pure + official)
    assert {r["run"]["sampling"]["strength"] for r in records if r["run"]["method"] == "xdiffusion"} == {0.5, 1.0}  # the strength ablation
    model_runs = [r for r in records if r["run"]["method"] == "xdiffusion" and r["run"]["case"] == "tumour0"]
    assert all(r["metrics"]["dice_wt"] is not None for r in model_runs)
    assert any(r["metrics"].get("uncertainty_auroc") is not None for r in model_runs)
    assert all(r["profile"]["distance_mm"] and min(r["profile"]["distance_mm"]) > 0 for r in records)

    again = suite.run_suite(grid, cases, pipeline, defaults, "tiny", tmp_path / "evaluation", log=logged.append)
    assert again["made"] == 0 and again["reused"] == summary["planned"]

    docs = tmp_path / "docs"
    make_report.main(["--results", str(tmp_path / "evaluation"), "--docs", str(docs)])
    text = (docs / "results.md").read_text(encoding="utf-8")
    for needle in ("Headline", "Method × K × plane", "Ablations", "Tumour agreement", "Brain volume", "Gallery", "reproduce"):
        assert needle in text
    for name in ("method_k", "profile", "views_steps", "dice", "brain_volume", "gallery"):
        assert (docs / "images" / f"results_{name}.png").stat().st_size > 1000
    page = (docs / "results.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 6 and "<table>" in page


def test_input_indices_spread_around_the_middle():
    assert suite.input_indices(78, 1) == [39]
    assert suite.input_indices(78, 3) == [26, 39, 52]
    assert suite.input_indices(120, 2) == [50, 70]
    with pytest.raises(Exception):
        suite.input_indices(2, 4)


def test_evaluate_command_scores_an_uncertainty_map(tmp_path, capsys):
    from xdiffusion.cli import main
    from xdiffusion.io import write_volume

    reference = oriented_volume(smooth_head((16, 16, 16)), np.eye(3))
    spread = np.random.default_rng(1).uniform(0.0, 1.0, reference.geometry.shape).astype(np.float32)
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("ref", "pred", "unc")}
    write_volume(reference, paths["ref"])
    write_volume(reference.with_array(reference.array - 10.0 * spread), paths["pred"])
    write_volume(reference.with_array(spread), paths["unc"])
    assert main(["evaluate", "--reference", str(paths["ref"]), "--prediction", str(paths["pred"]), "--uncertainty", str(paths["unc"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["uncertainty_auroc"] > 0.95 and metrics["uncertainty_spearman"] > 0.95 and "psnr" in metrics


# --- held-out individuals -----------------------------------------------------------------------------------------

import atlas_blur  # noqa: E402
import held_out_individuals as individuals  # noqa: E402
import make_individuals_report  # noqa: E402


def synthetic_scans() -> list:
    """Two 'subjects' on 4 mm voxels: one whole head (a bright skull around the brain), one skull-stripped."""
    scans = []
    for number, (name, whole_head) in enumerate((("subj_a", True), ("subj_b", False))):
        head = smooth_head((26, 28, 24), seed=10 + number)
        brain = ndimage.binary_erosion(head > 0, iterations=3)
        array = np.where(brain, head, np.where(head > 0, 900.0, 0.0)).astype(np.float32) if whole_head else (head * brain).astype(np.float32)
        image = oriented_volume(array, np.eye(3), spacing=(4.0, 4.0, 4.0), origin=(-52.0, -56.0, -48.0))
        scans.append(individuals.Scan(name, image, brain, whole_head))
    return scans


def test_shifted_cases_move_the_brain_off_the_grid_centre_and_keep_physical_positions():
    (scan, _) = synthetic_scans()
    cases = individuals.cases_from_scans([scan])
    assert set(cases) == {"subj-a-head", "subj-a-brain", "subj-a-brain-offcentre", "subj-a-brain-cropped"}
    brain, moved, cut = (cases[f"subj-a-brain{suffix}"] for suffix in ("", "-offcentre", "-cropped"))

    def centre_offset(case):  # brain centroid minus grid centre, in voxels
        return np.argwhere(case.brain).mean(0) - (np.asarray(case.image.geometry.shape) - 1) / 2

    assert np.all(np.abs(centre_offset(moved)) > np.abs(centre_offset(brain)) + 2)
    assert np.all(np.abs(centre_offset(cut)) > np.abs(centre_offset(brain)) + 1)
    pad = np.asarray(moved.image.geometry.shape) - np.asarray(brain.image.geometry.shape)
    np.testing.assert_array_equal(moved.image.array[pad[0]:, pad[1]:, pad[2]:], brain.image.array)
    np.testing.assert_allclose(moved.image.geometry.index_to_physical(pad), brain.image.geometry.origin)  # same place in space
    last = [np.flatnonzero(np.moveaxis(brain.brain, a, 0).reshape(brain.brain.shape[a], -1).any(1))[-1] for a in range(3)]
    assert list(cut.image.geometry.shape) == [int(l) + 1 - 5 for l in last]  # 20 mm = 5 voxels of 4 mm cut into the brain
    assert individuals.input_indices(160, 1) == [80] and individuals.input_indices(160, 3) == [40, 80, 120]


def test_blurred_atlas_keeps_the_input_slices_and_blurs_in_millimetres():
    image = oriented_volume(smooth_head((20, 22, 18), seed=2), np.eye(3), spacing=(2.0, 2.0, 4.0))
    inputs = individuals.select_slices(image, "axial")
    blurred = atlas_blur.blur(image, inputs, 4.0)
    np.testing.assert_array_equal(blurred.array[:, :, inputs.indices[0]], image.array[:, :, inputs.indices[0]])
    expected = ndimage.gaussian_filter(image.array, (2.0, 2.0, 1.0), mode="nearest")
    np.testing.assert_allclose(blurred.array[:, :, 2], expected[:, :, 2], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(atlas_blur.blur(image, inputs, 0.0).array, image.array)
    volumes = [(f"v{i}", oriented_volume(smooth_head((20, 22, 18), seed=i), np.eye(3), spacing=(4.0, 4.0, 4.0)), None) for i in (4, 5)]
    volumes = [(name, volume, volume.array > 0) for name, volume, _ in volumes]
    choice = atlas_blur.choose_sigma(volumes, candidates=(0.0, 2.0, 40.0), planes=("axial",), log=lambda line: None)
    by_sigma = {row["sigma_mm"]: row["psnr"] for row in choice["candidates"]}
    assert choice["chosen_sigma_mm"] == max(by_sigma, key=lambda s: (round(by_sigma[s], 6), -s))
    assert all(row["n"] == 2 for row in choice["candidates"])


def test_individuals_grid_and_report_end_to_end_on_a_tiny_model(tmp_path, model_dir):
    pipeline = XDiffusionPipeline.from_pretrained(model_dir)
    defaults = {"views": 2, "steps": 2, "guidance": 1.0, "solver": "dpmsolver++", "strength": 0.5, "prior": "atlas"}
    grid = individuals.GRIDS["quick"]
    cases = individuals.cases_from_scans(synthetic_scans())
    out = tmp_path / "individuals"
    summary = individuals.run_grid(grid, cases, pipeline, defaults, "tiny", 3.0, out, log=lambda line: None)
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert summary["made"] == summary["planned"] == len(records) and all("metrics" in r for r in records), [r.get("error") for r in records]
    assert {r["run"]["method"] for r in records} == set(individuals.METHODS)
    assert {r["run"]["kind"] for r in records} == {"head", "brain", "offcentre", "cropped"}
    assert {r["run"]["k"] for r in records if r["run"]["kind"] in ("offcentre", "cropped")} == {1}
    assert all(r["metrics"]["sharpness"] is not None and r["metrics"]["psnr_mask"] is not None for r in records)
    assert all(r["run"]["sampling"]["strength"] == 1.0 for r in records if r["run"]["method"] == "pure")
    blurred = [r for r in records if r["run"]["method"] == "atlas-blur"]
    assert blurred and all(r["run"]["sampling"] == {"sigma_mm": 3.0} for r in blurred)
    k3 = [r for r in records if r["run"]["k"] == 3]
    assert all(r["input_indices"] == individuals.input_indices(r["run"]["grid_shape"][r["axis"]], 3) for r in k3)
    again = individuals.run_grid(grid, cases, pipeline, defaults, "tiny", 3.0, out, log=lambda line: None)
    assert again["made"] == 0 and again["reused"] == summary["planned"]

    docs = tmp_path / "docs"
    make_individuals_report.main(["--results", str(out), "--docs", str(docs)])
    text = (docs / "results_individuals.md").read_text(encoding="utf-8")
    for needle in ("Per subject", "subj-a-head", "Issue 13's criteria", "Paired differences", "model alone (strength 1) minus extrude",
                   "Three input slices against one", "Gallery"):
        assert needle in text, needle
    assert "**better**" not in text and "**worse**" not in text  # two subjects: intervals, never a verdict
    for case in ("subj-a-head", "subj-a-brain", "subj-b"):
        assert (docs / "images" / f"individuals_gallery_{case}.png").stat().st_size > 1000
    assert not (docs / "images" / "individuals_gallery_subj-b-cropped.png").exists()
    assert "Against the previous default" not in text
    make_individuals_report.main(["--results", str(out), "--docs", str(docs), "--previous", str(out)])  # a model against itself
    text = (docs / "results_individuals.md").read_text(encoding="utf-8")
    section = text.split("## Against the previous default", 1)[1].split("## Gallery", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| default") or line.startswith("| model alone")]
    assert rows and all(line.count("+0.00 [+0.00, +0.00]") >= 2 for line in rows), section


def test_tumour_label_baselines_score_only_tumour_cases_on_the_suite_s_inputs():
    import tumour_label_baselines

    cases = synthetic_cases()
    rows = tumour_label_baselines.score_cases(cases, ("axial", "coronal"), (1, 2))
    assert {r["case"] for r in rows} == {"tumour0"} and len(rows) == 2 * 2 * 2  # planes x K x (copy, ellipsoid)
    shape = cases["tumour0"].image.geometry.shape  # identity direction: axial is array axis 2, coronal axis 1
    assert all(r["input_indices"] == suite.input_indices(shape[2 if r["plane"] == "axial" else 1], r["k"]) for r in rows)
    for row in rows:
        metrics = row["metrics"]
        assert 0.0 < metrics["dice_wt"] <= 1.0 and metrics["hd95_wt_mm"] is not None  # the input slice crosses the tumour
