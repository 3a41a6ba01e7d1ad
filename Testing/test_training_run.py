"""`xdiffusion train CONFIG` end to end on a tiny model and a small fake folder of volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import oriented_volume, smooth_head
from xdiffusion.cli import main
from xdiffusion.data.samples import SampleGenerator
from xdiffusion.data.training_set import TrainingSetConfig, build_training_cubes, build_validation_cubes
from xdiffusion.data.loaders import Subject
from xdiffusion.io import write_volume
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.training_run import DataConfig, make_validator, split_subjects


@pytest.fixture
def volume_folder(tmp_path):
    folder = tmp_path / "volumes"
    folder.mkdir()
    for number in range(3):
        write_volume(oriented_volume(smooth_head((24, 26, 22), seed=number), np.eye(3), spacing=(2.0, 2.0, 2.0)), folder / f"subject{number}.nii.gz")
    return folder


def test_user_folder_split_holds_out_the_last_subjects(volume_folder):
    training, validation = split_subjects(DataConfig(source=f"folder:{volume_folder}", validation_subjects=1))
    assert [s.id for s in training] == ["subject0.nii.gz", "subject1.nii.gz"]
    assert [s.id for s in validation] == ["subject2.nii.gz"]


def test_cubes_are_cached_and_reproducible(tmp_path, volume_folder):
    training, _ = split_subjects(DataConfig(source=f"folder:{volume_folder}"))
    config = TrainingSetConfig(cube_size=16, variants_per_subject=2, tumour_share=1.0, work_side=24)
    first = build_training_cubes(training, ["t1"], config, tmp_path / "cache")
    again = build_training_cubes(training, ["t1"], config, tmp_path / "cache")
    fresh = build_training_cubes(training, ["t1"], config, None)
    assert len(first) == 4 and len(list((tmp_path / "cache").rglob("*.npz"))) == 4
    for a, b, c in zip(first, again, fresh):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.image, c.image)
    assert any(cube.tumour.any() for cube in first)  # tumour_share=1 paints tumours


def test_atlas_draws_are_built_in_parallel_cached_and_the_same_as_built_in_process(tmp_path, volume_folder, monkeypatch):
    from xdiffusion.data import atlas_draws
    from xdiffusion.data.samples import SampleOptions

    training, _ = split_subjects(DataConfig(source=f"folder:{volume_folder}"))
    config = TrainingSetConfig(cube_size=16, variants_per_subject=1, work_side=24)
    options = SampleOptions(atlas_conditioning=True)
    built = build_training_cubes(training, ["t1"], config, tmp_path / "cache", atlas_draws=2, options=options)
    assert len(list((tmp_path / "cache").rglob("*.atlas-*.npz"))) == 2
    in_process = build_training_cubes(training, ["t1"], config, None, atlas_draws=2, options=options)
    monkeypatch.setattr(atlas_draws, "register_draw", lambda *args: pytest.fail("cached draws were registered again"))
    again = build_training_cubes(training, ["t1"], config, tmp_path / "cache", atlas_draws=2, options=options)
    for a, b, c in zip(built, in_process, again):
        assert len(a.atlas_draws) == 2
        for x, y, z in zip(a.atlas_draws, b.atlas_draws, c.atlas_draws):
            assert (x.axis, x.positions, x.thickness) == (y.axis, y.positions, y.thickness) == (z.axis, z.positions, z.thickness)
            np.testing.assert_array_equal(x.guess, y.guess)
            np.testing.assert_array_equal(x.guess, z.guess)


def test_a_new_recipe_version_does_not_reuse_the_old_cache(tmp_path, volume_folder, monkeypatch):
    from xdiffusion.data import training_set

    training, _ = split_subjects(DataConfig(source=f"folder:{volume_folder}"))
    config = TrainingSetConfig(cube_size=16, variants_per_subject=1, work_side=24)
    build_training_cubes(training[:1], ["t1"], config, tmp_path / "cache")
    monkeypatch.setattr(training_set, "RECIPE_VERSION", training_set.RECIPE_VERSION + 1)
    build_training_cubes(training[:1], ["t1"], config, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # a second folder: the old cubes were not taken as new


def test_train_command_writes_a_loadable_model_with_validation(tmp_path, volume_folder, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {preset: tiny, modalities: [t1]}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, steps: 6, batch_size: 4, validate_every: 3, checkpoint_every: 3, log_every: 2, warmup_steps: 1}}\n"
        f"data: {{source: 'folder:{volume_folder}', variants_per_subject: 2, validation_samples: 4, validation_steps: 2}}\n"
    )
    assert main(["train", str(config), "train.lr=0.0005"]) == 0
    model_dir = tmp_path / "run" / "model"
    pipeline = XDiffusionPipeline.from_pretrained(model_dir)
    card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    assert card["steps"] == 6 and card["training_config"]["train"]["lr"] == 0.0005
    assert {"val/psnr", "val/psnr_extrude", "val/ssim"} <= set(card["validation"])
    assert card["training_data"]["source"].startswith("folder:")
    assert pipeline.model_config.modalities == ["t1"]


def test_validator_scores_the_extrude_prior_and_the_model(volume_folder):
    training, _ = split_subjects(DataConfig(source=f"folder:{volume_folder}"))
    cubes = build_validation_cubes(training[:1], ["t1"], 16, tumour_seeds=())
    from test_pipeline import tiny_model

    model = tiny_model()
    model.config.modalities = ["t1", "t2"]
    metrics = make_validator(cubes, ["t1", "t2"], 4, count=3, steps=2)(model)
    assert set(metrics) == {"psnr", "ssim", "psnr_extrude", "ssim_extrude", "sharpness"}
    assert 0 < metrics["psnr_extrude"] < 100 and -1 <= metrics["ssim"] <= 1
    assert metrics["sharpness"] > 0  # an untrained model's noise is far from the truth's detail, but never flat


def test_unknown_data_keys_are_refused(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {preset: tiny}\ndata: {sauce: fetched}\n")
    assert main(["train", str(config)]) == 2
