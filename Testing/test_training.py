"""Training: the loss falls on learnable data, checkpoints resume exactly, the exported folder loads verified."""

from __future__ import annotations

import csv

import pytest
import torch
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from torch.utils.data import Dataset

from xdiffusion.errors import InputError
from xdiffusion.model import load_model
from xdiffusion.model.networks import encode_target, min_snr_weights
from xdiffusion.model.train_config import TrainConfig
from xdiffusion.model.training import Trainer, checkpoints, resolve_config, train


class CopyGuessSamples(Dataset):
    """Samples whose target is a deterministic function of the guess channel: learnable in a few dozen steps."""

    description = "synthetic: target = guess, tumours = sign(guess)"

    def __init__(self, count: int = 64, size: int = 16, slots: int = 4) -> None:
        self.count, self.size, self.slots = count, size, slots

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        s = self.size
        coarse = torch.randn(1, 1, 4, 4, generator=g)
        guess = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)[0]
        guess = guess.clamp(-1, 1)
        present = torch.zeros(self.slots)
        present[0] = 1
        return {
            "target": torch.cat([guess, guess.sign().expand(3, s, s)]),
            "inputs": torch.cat([guess, torch.zeros(self.slots - 1, s, s)]),
            "input_present": present,
            "input_plane": torch.zeros(self.slots),
            "input_position": torch.zeros(self.slots),
            "guess": guess,
            "known_distance": torch.zeros(1, s, s),
            "rotation": torch.eye(3),
            "depth": torch.tensor(0.0),
            "modality": torch.tensor(0.0),
        }


def _config(tmp_path, **train):
    settings = {"output_dir": str(tmp_path / "run"), "steps": 40, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1,
                "log_every": 1, "checkpoint_every": 20, "validate_every": 20, "seed": 0}
    settings.update(train)
    return {"model": {"preset": "tiny", "cfg_dropout": 0.0}, "train": settings, "data": {"kind": "copy-guess"}}


def _losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["name"] == "train/loss"]


def test_overrides_and_validation_of_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  lr: 1e-4\n")
    resolved = resolve_config(path, ["train.steps=7", "model.unet.layers_per_block=2", "model.modalities=[t1]"])
    assert resolved["train"]["steps"] == 7 and resolved["train"]["lr"] == 1e-4
    assert resolved["model"]["unet"]["layers_per_block"] == 2 and resolved["model"]["modalities"] == ["t1"]
    assert resolved["model"]["cube_size"] == 16
    with pytest.raises(InputError, match="unknown key"):
        resolve_config(path, ["train.stpes=7"])
    with pytest.raises(InputError, match="must be int"):
        resolve_config(path, ["train.steps=many"])
    with pytest.raises(InputError, match="key=value"):
        resolve_config(path, ["train.steps"])


def _fixed_loss(trainer: Trainer) -> float:
    """The diffusion loss on a fixed batch with fixed noise and timesteps: comparable before and after training."""
    batch = torch.utils.data.default_collate([CopyGuessSamples(count=1000)[i] for i in range(900, 932)])
    torch.manual_seed(123)
    with torch.no_grad():
        return trainer.loss(batch).item()


def test_tiny_model_learns_and_exports_a_verified_folder(tmp_path):
    seen = []

    def validate(model) -> dict[str, float]:
        seen.append(type(model).__name__)
        return {"score": 1.5}

    trainer = Trainer(resolve_config(_config(tmp_path), ["train.steps=30", "train.checkpoint_every=15",
                                                          "train.validate_every=15"]), CopyGuessSamples(), validate)
    before = _fixed_loss(trainer)
    folder = trainer.run()
    after = _fixed_loss(trainer)
    assert after < 0.75 * before, (before, after)
    assert len(_losses(tmp_path / "run")) == 30
    assert seen == ["XDiffusionModel", "XDiffusionModel"]

    loaded = load_model(folder)
    assert loaded.model_card["steps"] == 30 and loaded.model_card["validation"] == {"val/score": 1.5}
    assert loaded.model_card["training_data"] == {"kind": "copy-guess"}
    assert loaded.config == trainer.config
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert [step for step, _ in checkpoints(tmp_path / "run")] == [15, 30]


def test_resume_restores_step_optimizer_and_ema(tmp_path):
    first = Trainer(resolve_config(_config(tmp_path, steps=6, checkpoint_every=3, validate_every=100)),
                    CopyGuessSamples())
    first.run()
    resumed = Trainer(resolve_config(_config(tmp_path, steps=6, resume="latest")), CopyGuessSamples())
    assert resumed.step == 6
    a, b = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for key, state in a["state"].items():
        assert torch.equal(state["exp_avg"], b["state"][key]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], b["state"][key]["exp_avg_sq"])
    for p, q in zip(first._denoiser().parameters(), resumed._denoiser().parameters()):
        assert torch.equal(p, q)
    for p, q in zip(first.ema.shadow_params, resumed.ema.shadow_params):
        assert torch.equal(p, q)
    assert resumed.ema.optimization_step == first.ema.optimization_step == 6

    # resuming from an earlier checkpoint continues counting from there
    earlier = Trainer(resolve_config(_config(tmp_path, steps=6, resume=str(tmp_path / "run/checkpoints/step-3"))),
                      CopyGuessSamples())
    assert earlier.step == 3
    earlier.run()
    assert earlier.step == 6
    with pytest.raises(InputError, match="not a complete training checkpoint"):
        Trainer(resolve_config(_config(tmp_path, resume=str(tmp_path / "nowhere"))), CopyGuessSamples())


def test_latent_mode_trains_the_autoencoder_first(tmp_path):
    config = _config(tmp_path, steps=3, autoencoder_steps=5, validate_every=100)
    config["model"]["latent"] = True
    held_out = torch.stack([CopyGuessSamples(count=100)[i]["target"] for i in range(90, 98)])
    folder = train(config, samples=CopyGuessSamples(), held_out=held_out)
    loaded = load_model(folder)
    assert loaded.autoencoder is not None and loaded.config.latent_scale != 1.0
    assert loaded.config.latent_scale == loaded.model_card["latent_scale"]
    assert {"psnr", "dice", "held_out_slices"} <= set(loaded.model_card["autoencoder"])
    assert not any(p.requires_grad for p in loaded.autoencoder.parameters())


def test_a_resume_at_the_last_step_still_validates_what_it_exports(tmp_path):
    Trainer(resolve_config(_config(tmp_path, steps=4, checkpoint_every=4, validate_every=100)), CopyGuessSamples()).run()
    resumed = Trainer(resolve_config(_config(tmp_path, steps=4, resume="latest")), CopyGuessSamples(), lambda model: {"score": 2.0})
    assert resumed.step == 4
    assert load_model(resumed.run()).model_card["validation"] == {"val/score": 2.0}


def test_a_run_folder_as_a_killed_run_leaves_it_resumes_from_its_newest_complete_checkpoint(tmp_path):
    """`checkpoints/step-N` (what runs in progress, runs/detail among them, have on disk), plus a save killed halfway
    (its staging folder, and a renamed-looking `step-N` without its step file): the resume takes the newest complete
    one, and the next saves rotate the old ones out without tripping over the leftovers."""
    Trainer(resolve_config(_config(tmp_path, steps=4, checkpoint_every=2, validate_every=100, keep_checkpoints=3)),
            CopyGuessSamples()).run()
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(entry.name for entry in folder.iterdir()) == ["step-2", "step-4"]
    (folder / ".step-6.tmp").mkdir()
    (folder / "step-6").mkdir()  # no train_step.json: incomplete
    resumed = Trainer(resolve_config(_config(tmp_path, steps=8, checkpoint_every=2, validate_every=100, keep_checkpoints=2,
                                             resume="latest")), CopyGuessSamples())
    assert resumed.step == 4 and not resumed.accelerator.project_configuration.automatic_checkpoint_naming
    resumed.run()
    assert [step for step, _ in checkpoints(tmp_path / "run")] == [6, 8]
    assert (folder / "step-6" / "train_step.json").is_file()


def test_latent_targets_are_encoded_in_the_loader_worker_as_the_trainer_would(tmp_path):
    config = _config(tmp_path, steps=2, autoencoder_steps=3, validate_every=100, num_workers=1)
    config["model"]["latent"] = True
    trainer = Trainer(resolve_config(config), CopyGuessSamples())
    batch = next(iter(trainer.loader))
    expected = encode_target(trainer.autoencoder, batch["target"], trainer.config.latent_scale)
    torch.testing.assert_close(batch["target_latent"], expected)
    assert torch.isfinite(trainer.loss(batch))
    without_workers = Trainer(resolve_config(_config(tmp_path / "plain", steps=2, validate_every=100)), CopyGuessSamples())
    assert "target_latent" not in next(iter(without_workers.loader))  # pixel models and in-process loading: as before


def test_min_snr_weights_cap_the_low_noise_timesteps():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    noise = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    timesteps = torch.tensor([0, 10, 500, 999])
    snr = compute_snr(noise, timesteps)
    weights = min_snr_weights(noise, timesteps, 5.0, "v_prediction")
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert weights[0] < weights[2] and weights[0] == pytest.approx(5.0 / (snr[0] + 1).item())
    torch.testing.assert_close(min_snr_weights(noise, timesteps, 5.0, "epsilon"), torch.minimum(snr, torch.tensor(5.0)) / snr)


def test_training_with_min_snr_weighting_runs_and_refuses_a_negative_gamma(tmp_path):
    Trainer(resolve_config(_config(tmp_path, steps=2, validate_every=100, snr_gamma=5.0)), CopyGuessSamples()).run()
    assert len(_losses(tmp_path / "run")) == 2
    with pytest.raises(InputError, match="snr_gamma"):
        TrainConfig(**_config(tmp_path, snr_gamma=-1.0)["train"])


def test_cpu_training_leaves_the_loader_workers_their_cores(tmp_path, monkeypatch):
    from xdiffusion import compute

    monkeypatch.setattr(compute, "usable_cores", lambda: 4)
    torch.set_num_threads(4)  # restored to one thread by the autouse fixture
    Trainer(resolve_config(_config(tmp_path, num_workers=1, steps=1)), CopyGuessSamples())
    assert torch.get_num_threads() == 3
    Trainer(resolve_config(_config(tmp_path / "more", num_workers=6, steps=1)), CopyGuessSamples())
    assert torch.get_num_threads() == 1  # never below one
    torch.set_num_threads(2)  # fewer than the free cores, e.g. set by the user: kept
    Trainer(resolve_config(_config(tmp_path / "fewer", num_workers=0, steps=1)), CopyGuessSamples())
    assert torch.get_num_threads() == 2
