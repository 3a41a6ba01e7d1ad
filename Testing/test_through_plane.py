"""`upsample --method learned`: the through-plane network's inputs match between training and inference, the
correction lands where it should, the method keeps the grid and the slab consistency, training runs and resumes,
and the command records the network. Tiny networks and volumes only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import smooth_head
from test_upsample import thick_volume
from xdiffusion.cli import main
from xdiffusion.errors import InputError
from xdiffusion.io import GENERATED_DESCRIPTION, Geometry, Volume, read_volume, write_volume
from xdiffusion.upsample import isotropic_grid, thick_stack, upsample
from xdiffusion.upsample.slabs import slab_average, slab_consistency_error, slab_positions, slab_weights
from xdiffusion.upsample.stack import slab_grid
from xdiffusion.upsample.through_plane import (BACKGROUND_LEVEL, PACKAGED_WEIGHTS, ThroughPlaneNet, intensity_scale,
                                               load_through_plane_net, neighbour_planes, refine, row_offsets,
                                               weights_sha256)
from xdiffusion.upsample.through_plane_training import (FineVolume, PlanePairs, resume_point, thick_plane,
                                                        train_through_plane, training_pair, widened)

TINY = (4, 4, 8, 8, 8, 4)


class ConstantCorrection(torch.nn.Module):
    """Stands in for the network: the same correction everywhere, and it records the planes it is shown."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(inputs.shape))
        return torch.full_like(inputs[:, :1], self.value)


def test_the_training_input_is_the_inference_input():
    """The 2D B-spline and projection of training equal the planes of the 3D method that inference starts from."""
    rng = np.random.default_rng(0)
    fine = smooth_head((30, 26, 44), 1) + 0.05 * rng.random((30, 26, 44)).astype(np.float32)
    volume = Volume(fine, Geometry(fine.shape, np.ones(3), np.zeros(3), np.eye(3)))
    voxels, phase = 5, 2
    stack = thick_stack(slab_average(volume, 2, voxels, start=phase))
    grid = isotropic_grid(stack, 1.0)
    three_d = upsample(stack, "bspline", grid=grid).image.array
    prior, target, offsets = thick_plane(np.ascontiguousarray(fine[:, 9, :].T), voxels, phase)
    np.testing.assert_allclose(prior, three_d[:, 9, :].T, atol=1e-6 * float(np.abs(fine).max()))
    np.testing.assert_array_equal(target, fine[:, 9, phase:phase + prior.shape[0]].T)
    np.testing.assert_allclose(offsets, row_offsets(slab_positions(grid, slab_grid(stack, grid), 2)), atol=1e-9)
    assert offsets.min() == pytest.approx(-0.4) and offsets.max() == pytest.approx(0.4)


def test_refine_adds_the_correction_over_both_families_of_planes_in_the_volume_units():
    prior = smooth_head((12, 10, 15), 2) * 300.0
    prior[:, :, :2] = 0.0  # air around the head: the B-spline's background
    net = ConstantCorrection(0.1)
    out = refine(prior, 1, np.arange(10) / 3.0, 3.0, net, batch=4)
    background = np.abs(prior) < BACKGROUND_LEVEL * intensity_scale(prior)
    assert background[:, :, :2].all() and not background.all()
    np.testing.assert_allclose(out, np.where(background, prior, prior + 0.1 * intensity_scale(prior)), rtol=1e-5)
    # rows are always the slice axis (10 rows); one family stacks along axis 0 (12 planes of 10 x 15), one along 2
    assert {shape[2:] for shape in net.seen} == {(10, 15), (10, 12)}
    assert sum(shape[0] for shape in net.seen) == 12 + 15 and all(shape[1] == 3 for shape in net.seen)


def test_context_planes_are_the_family_neighbours_with_the_ends_repeated():
    planes = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    neighbours = neighbour_planes(planes, np.array([0, 3]), 2)
    assert neighbours.shape == (2, 4, 2, 3)
    np.testing.assert_array_equal(neighbours[:, :, 0, 0], [[0, 1, 0, 2], [2, 4, 1, 4]])  # -1, +1, -2, +2


def test_a_widened_network_starts_as_the_one_it_came_from_and_reads_its_neighbours():
    torch.manual_seed(0)
    net = ThroughPlaneNet(features=TINY).eval()
    torch.nn.init.normal_(net.network.final_conv.weight, std=0.5)
    wider = widened(net, 1).eval()
    assert wider.config.context_planes == 1
    prior = smooth_head((18, 32, 20), 2) * 300.0  # 32 rows: four halvings leave the instance norm 2 x 2
    positions = np.arange(32) / 3.0
    np.testing.assert_allclose(refine(prior, 1, positions, 3.0, wider), refine(prior, 1, positions, 3.0, net), rtol=1e-5)
    with pytest.raises(InputError, match="cannot widen a network of 1 context planes to 0"):
        widened(wider, 0)
    recorder = ConstantCorrection(0.0)
    recorder.config = {"context_planes": 1}
    refine(prior, 1, positions, 3.0, recorder, batch=4)
    assert all(shape[1] == 5 for shape in recorder.seen)


def test_training_pairs_with_context_cut_the_neighbours_like_the_plane():
    image = smooth_head((40, 44, 36), 3).astype(np.float16)
    volume = FineVolume(image, image > 0.2, "phantom")
    inputs, target = training_pair(volume, np.random.default_rng(0), context_planes=2)
    assert inputs.shape == (7, 128, 128) and target.shape == (1, 128, 128)
    assert not np.array_equal(inputs[3], inputs[0])  # a neighbour is another plane ...
    similarity = [np.corrcoef(inputs[0].ravel(), inputs[k].ravel())[0, 1] for k in range(3, 7)]
    assert min(similarity[:2]) > 0.95 and max(similarity[2:]) < min(similarity[:2])  # ... the nearest look the most alike
    assert training_pair(volume, np.random.default_rng(0))[0].shape == (3, 128, 128)


def test_the_learned_method_keeps_the_grid_and_the_slabs(tmp_path):
    stack = thick_stack(thick_volume(shape=(20, 18, 7), direction=np.diag([-1.0, -1.0, 1.0])))
    torch.manual_seed(0)
    net = ThroughPlaneNet(features=TINY).eval()
    bspline = upsample(stack, "bspline").image.array
    np.testing.assert_allclose(upsample(stack, "learned", through_plane_net=net).image.array, bspline, atol=1e-3)  # fresh: zero
    torch.nn.init.normal_(net.network.final_conv.weight, std=0.5)
    result = upsample(stack, "learned", through_plane_net=net)
    grid = isotropic_grid(stack)
    assert result.image.geometry.same_as(grid) and np.isfinite(result.image.array).all()
    assert slab_consistency_error(result.image.array, stack.volume.array, slab_weights(grid, stack.geometry, 2), 2) < 1e-3
    assert np.abs(result.image.array - bspline).max() > 1e-2
    assert result.image.metadata["description"] == f"{GENERATED_DESCRIPTION} (learned upsample)"
    assert result.sampling["network"] == "ThroughPlaneNet" and len(result.model_card["sha256"]["parameters_float16"]) == 64


def test_training_pairs_are_deterministic_and_training_writes_resumable_weights(tmp_path):
    rng = np.random.default_rng(1)
    image = (smooth_head((40, 44, 36), 3) + 0.02 * rng.random((40, 44, 36))).astype(np.float16)
    volume = FineVolume(image, image > 0.2, "phantom")
    first, again = training_pair(volume, np.random.default_rng(5)), training_pair(volume, np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[0].shape == (3, 128, 128) and first[1].shape == (1, 128, 128) and np.isfinite(first[0]).all()
    assert 0.25 <= first[0][2].max() <= 1.0  # 2-8 voxel slabs, scaled by 8
    assert len(PlanePairs([volume], seed=2)) > 10**6
    torch.manual_seed(0)
    step = train_through_plane(ThroughPlaneNet(features=TINY), [volume], tmp_path, steps=2, batch_size=2, validate_every=1)
    assert step == 2 and (tmp_path / "through_plane" / "config.json").is_file()
    rows = (tmp_path / "through_plane_metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,val_psnr_gain_db,seconds" and len(rows) == 4
    assert rows[1].startswith("0,,0.0")  # the starting point: a fresh network adds nothing
    net, start = resume_point(tmp_path)
    assert start == 2 and net is not None and net.config.features == list(TINY)
    assert train_through_plane(net, [volume], tmp_path, steps=3, batch_size=2, validate_every=1, start_step=start) == 3


def test_the_command_runs_a_given_network_and_records_it(tmp_path, capsys):
    stack_path = tmp_path / "thick.nii.gz"
    write_volume(thick_volume(shape=(20, 18, 6)), stack_path)
    ThroughPlaneNet(features=TINY).save_pretrained(tmp_path / "net")
    assert main(["upsample", str(stack_path), "-o", str(tmp_path / "up.nii.gz"), "--method", "learned", "--model",
                 str(tmp_path / "net"), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(event["stage"] == "through-plane network" for event in events) and events[-1]["progress"] == 1.0
    record = json.loads((tmp_path / "up.json").read_text())
    assert record["Method"] == "learned" and record["Model"]["path"] == str((tmp_path / "net").absolute())
    assert record["Model"]["id"].startswith("ThroughPlaneNet ") and record["SlabConsistencyRMS"] < 1e-2
    assert read_volume(tmp_path / "up.nii.gz").geometry.shape == (20, 18, 30)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "3"], "--steps: model options apply to --method xdiffusion"),
    (["--model", "MISSING"], "holds no through-plane network"),
])
def test_bad_learned_options_are_one_error_line(tmp_path, capsys, extra, message):
    stack_path = tmp_path / "thick.nii.gz"
    write_volume(thick_volume(), stack_path)
    extra = [str(tmp_path / "missing") if item == "MISSING" else item for item in extra]
    assert main(["upsample", str(stack_path), "-o", str(tmp_path / "out.nii.gz"), "--method", "learned", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out.nii.gz").exists()


def test_the_packaged_network_is_trained_and_matches_its_readme():
    net = load_through_plane_net()
    assert isinstance(net, ThroughPlaneNet) and next(net.parameters()).dtype == torch.float32
    assert weights_sha256(net) in (PACKAGED_WEIGHTS / "README.md").read_text(encoding="utf-8")
    assert float(net.network.final_conv.weight.detach().abs().max()) > 0  # a fresh network's last layer is all zeros
