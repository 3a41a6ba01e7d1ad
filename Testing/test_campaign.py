"""Training as a campaign: float16 sharded snapshots, a clean stop at a time budget that resumes from the snapshot,
and the GPU pack's entry point training from packed cubes without SimpleITK."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from test_training import CopyGuessSamples

from xdiffusion.data.samples import TrainingCube
from xdiffusion.errors import InputError
from xdiffusion.model.campaign import export_model, read_snapshot, write_snapshot
from xdiffusion.model.checkpoint import load_model
from xdiffusion.model.training import Trainer, checkpoints, resolve_config

REPO = Path(__file__).resolve().parents[1]
PACKER = REPO / "scripts" / "gpu_campaign"


def _config(tmp_path: Path, run: str = "run", **train) -> dict:
    settings = {"output_dir": str(tmp_path / run), "steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1,
                "log_every": 1, "checkpoint_every": 100, "validate_every": 100, "seed": 0,
                "snapshot_dir": str(tmp_path / "snapshot")}
    settings.update(train)
    return {"model": {"preset": "tiny"}, "train": settings}


def _steps_logged(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row["name"] == "train/loss"]


def test_snapshot_round_trip_is_the_ema_in_float16_sharded(tmp_path):
    trainer = Trainer(resolve_config(_config(tmp_path)), CopyGuessSamples())
    trainer.run()
    folder = write_snapshot(trainer, tmp_path / "small", max_shard_mb=0.1)
    shards = sorted(folder.glob("weights-*.safetensors"))
    assert len(shards) > 2 and all(p.stat().st_size <= 0.1 * 2**20 for p in shards)
    snapshot = read_snapshot(folder)
    assert snapshot.step == 4 and snapshot.index["training_config"]["train"]["steps"] == 4
    assert (folder / "xdiffusion_config.json").is_file() and _steps_logged(folder) == [1, 2, 3, 4]
    assert all(value.dtype == torch.float16 for value in snapshot.weights.values())
    denoiser = trainer.accelerator.unwrap_model(trainer.model)
    names = [name for name, _ in denoiser.named_parameters()]
    for name, shadow in zip(names, trainer.ema.shadow_params):
        assert torch.equal(snapshot.weights[name], shadow.to(torch.float16)), name
    assert not torch.equal(trainer.ema.shadow_params[0], next(denoiser.parameters()))  # EMA, not training weights

    shards[0].write_bytes(shards[0].read_bytes()[:-2] + b"xx")
    with pytest.raises(InputError, match="does not match its SHA-256"):
        read_snapshot(folder)


def test_a_run_stopped_by_its_time_budget_resumes_from_the_snapshot(tmp_path):
    config = _config(tmp_path, steps=10**6, max_minutes=0.002, autoencoder_steps=2)
    config["model"]["latent"] = True
    first = Trainer(resolve_config(config), CopyGuessSamples())
    assert first.run() == tmp_path / "snapshot" and first.stopped_by_budget
    reached = first.step
    assert 1 <= reached < 10**6 and [step for step, _ in checkpoints(tmp_path / "run")] == [reached]

    # a fresh machine (no local checkpoint): the snapshot's weights go into model and EMA, the step count continues
    fresh = _config(tmp_path, run="elsewhere", steps=reached + 2, resume="latest", autoencoder_steps=2)
    fresh["model"]["latent"] = True
    resumed = Trainer(resolve_config(fresh), CopyGuessSamples())
    assert resumed.step == reached and resumed.config.latent_scale == first.config.latent_scale
    for p, q in zip(resumed.autoencoder.parameters(), first.autoencoder.parameters()):
        assert torch.equal(p, q.half().float())
    snapshot = read_snapshot(tmp_path / "snapshot")
    for (name, p), shadow in zip(resumed.accelerator.unwrap_model(resumed.model).named_parameters(),
                                 resumed.ema.shadow_params):
        assert torch.equal(p, snapshot.weights[name].float()) and torch.equal(p, shadow)
    resumed.run()
    assert resumed.step == reached + 2
    assert _steps_logged(tmp_path / "elsewhere") == list(range(1, reached + 3))
    assert read_snapshot(tmp_path / "snapshot").step == reached + 2

    # where the run stopped, its own checkpoint (with the optimiser's moments) wins over an older snapshot...
    (tmp_path / "snapshot" / "snapshot.json").write_text(
        (tmp_path / "snapshot" / "snapshot.json").read_text().replace(f'"step": {reached + 2}', '"step": 0'))
    local = Trainer(resolve_config({**config, "train": {**config["train"], "resume": "latest"}}), CopyGuessSamples())
    assert local.step == reached and local.optimizer.state_dict()["state"]


def test_a_snapshot_exports_to_a_model_folder_with_its_weights_and_an_honest_card(tmp_path):
    config = _config(tmp_path, steps=2, autoencoder_steps=2)
    config["model"]["latent"] = True
    held_out = torch.stack([CopyGuessSamples(count=100)[i]["target"] for i in range(90, 94)])
    trainer = Trainer(resolve_config(config), CopyGuessSamples(), held_out=held_out)
    trainer.run()
    snapshot = read_snapshot(tmp_path / "snapshot")
    model = load_model(export_model(snapshot, tmp_path / "exported"))  # load_model checks every weight's SHA-256
    for name, module in (("unet", model.unet), ("condition_encoder", model.condition_encoder), ("autoencoder", model.autoencoder)):
        state = module.state_dict()
        assert set(state) == set(snapshot.component(name)), name
        assert all(torch.equal(state[key], value.float()) for key, value in snapshot.component(name).items()), name
    assert model.config == trainer.config  # latent scale included
    card = model.model_card
    assert card["steps"] == 2 and card["campaign_snapshot"]["step"] == 2 and card["segments_tumours"] is False
    assert "psnr" in card["autoencoder"] and card["autoencoder_training"] == snapshot.index["autoencoder"]["training"]
    assert model.scheduler_config["prediction_type"] == trainer.noise.config.prediction_type

    from xdiffusion.model.label_net import TumourLabelNet

    TumourLabelNet().save_pretrained(tmp_path / "label_net", safe_serialization=True)
    script = _script(REPO / "scripts" / "export_snapshot.py")
    assert script.main([str(tmp_path / "snapshot"), "-o", str(tmp_path / "with_labels"), "--label-net", str(tmp_path / "label_net")]) == 0
    assert load_model(tmp_path / "with_labels").label_net is not None
    assert script.main([str(tmp_path / "run"), "-o", str(tmp_path / "nothing")]) == 2  # a run folder is no snapshot
    assert not (tmp_path / "nothing").exists()


def _pack_module():
    spec = importlib.util.spec_from_file_location("gpu_pack_builder", PACKER / "pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_entry_point_trains_from_the_pack_without_simpleitk(tmp_path):
    trainer = Trainer(resolve_config(_config(tmp_path, steps=2)), CopyGuessSamples())
    trainer.run()
    rng = np.random.default_rng(0)
    cubes = [TrainingCube(rng.random((16, 16, 16), dtype=np.float32) * 300, (rng.random((16, 16, 16)) > 0.9).astype(np.uint8),
                          modality) for modality in ("t1", "t2", "t1")]
    packer = _pack_module()
    pack = tmp_path / "gpu_pack"
    index = packer.build_pack(trainer.resolved, cubes, tmp_path / "snapshot", pack, sample_seed=0)
    assert index["snapshot_step"] == 2 and index["cubes"]["max_error_of_p99_5"] < 0.01
    assert (pack / "src" / "xdiffusion" / "model" / "campaign.py").is_file()
    assert not (pack / "src" / "xdiffusion" / "default_model").exists()

    out = tmp_path / "out"
    out.mkdir()
    entry = (packer.BLOCK_SIMPLEITK + "import runpy; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(pack / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", entry, str(pack / "train_gpu.py"), "--pack", str(pack), "--out", str(out),
                           "--minutes", "0.05", "--workers", "0"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    snapshot = read_snapshot(out / "snapshot")
    assert snapshot.step > 2 and "trained steps 2 ->" in done.stdout
    assert all(p.stat().st_size <= 16 * 2**20 for p in (out / "snapshot").iterdir())
    assert json.loads((out / "snapshot" / "snapshot.json").read_text())["dtype"] == "float16"


def test_the_simpleitk_blocker_used_above_does_block_it():
    blocked = subprocess.run([sys.executable, "-c", _pack_module().BLOCK_SIMPLEITK + "import xdiffusion.io as m; "
                              "m.read_image('x.nii')"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "XDiffusionLib")})
    assert "SimpleITK is blocked" in blocked.stderr  # the blocker works, and reading an image still needs SimpleITK


def _script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unpack_installs_only_a_newer_verified_snapshot_and_campaign_commits_only_it(tmp_path):
    Trainer(resolve_config(_config(tmp_path, steps=2)), CopyGuessSamples()).run()
    repo = tmp_path / "repo"
    unpack = _script(PACKER / "unpack.py")
    assert unpack.main([str(tmp_path / "snapshot"), str(repo / "campaign" / "snapshot")]) == 0
    assert unpack.main([str(tmp_path / "snapshot"), str(repo / "campaign" / "snapshot")]) == 2  # not newer

    campaign = _script(REPO / "scripts" / "campaign.py")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "other.txt").write_text("someone else's work\n")
    for args in (["config", "user.email", "t@example.org"], ["config", "user.name", "t"], ["add", "other.txt"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    message = campaign.commit_snapshot(repo, repo / "campaign" / "snapshot", "tiny")
    assert message == "campaign tiny: EMA weights (float16) and log at step 2; not validated yet"
    committed = subprocess.run(["git", "-C", str(repo), "show", "--name-only", "--format="], capture_output=True,
                               text=True, check=True).stdout.split()
    assert committed and all(name.startswith("campaign/snapshot/") for name in committed)
    assert campaign.commit_snapshot(repo, repo / "campaign" / "snapshot", "tiny") is None  # nothing new


def test_a_stopped_campaign_stops_its_trainer_and_commits_what_it_left(tmp_path, monkeypatch):
    import signal
    import threading

    campaign = _script(REPO / "scripts" / "campaign.py")
    started, commits, handled = [], [], []
    before = signal.getsignal(signal.SIGTERM)

    def stop() -> None:  # SIGTERM to this process where the campaign handles it; else end the child (no hang)
        handled.append(signal.getsignal(signal.SIGTERM) is not before)
        os.kill(os.getpid(), signal.SIGTERM) if handled[-1] else started[-1].kill()

    real_popen = subprocess.Popen

    def trainer(command, *args, **kwargs):  # `xdiffusion train` becomes a child that would run on for a minute
        if "xdiffusion.cli" not in command:
            return real_popen(command, *args, **kwargs)  # git
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        threading.Timer(0.5, stop).start()
        return started[-1]

    monkeypatch.setattr(campaign.subprocess, "Popen", trainer)
    monkeypatch.setattr(campaign, "commit_snapshot", lambda *args: commits.append(args) or None)
    monkeypatch.setattr(campaign, "POLL_SECONDS", 0.05)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code = campaign.main(["config.yaml", "--snapshot-dir", str(tmp_path / "snapshot")])
    assert handled == [True] and started[0].poll() is not None and code == -signal.SIGTERM
    assert len(commits) == 1 and signal.getsignal(signal.SIGTERM) is before


def test_the_gpu_pack_refuses_an_atlas_conditioned_config_in_one_line(tmp_path, capsys):
    config = Path(__file__).resolve().parent.parent / "configs" / "detail.yaml"
    code = _pack_module().main([str(config), "model.atlas_conditioning=true", "--out", str(tmp_path / "pack")])
    assert code == 2 and not (tmp_path / "pack").exists()
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "atlas draws" in message


@pytest.mark.parametrize("atlas_conditioning", [True, False])
def test_an_exported_atlas_conditioned_model_samples_with_its_atlas_unless_told_otherwise(tmp_path, atlas_conditioning):
    """The validation split preferred the atlas as conditioning at strength 1 (docs/model.md): the card says so, so
    that `reconstruct --model` of the export does not withhold what the model was trained to read."""
    from xdiffusion.cli import DEFAULT_SAMPLING
    from xdiffusion.model_card import resolve_sampling

    config = _config(tmp_path)
    config["model"]["atlas_conditioning"] = atlas_conditioning
    trainer = Trainer(resolve_config(config), CopyGuessSamples())
    exported = export_model(read_snapshot(write_snapshot(trainer, tmp_path / "snap")), tmp_path / "exported")
    card = json.loads((exported / "model_card.json").read_text())
    sampling = resolve_sampling(card, DEFAULT_SAMPLING)
    if atlas_conditioning:
        assert (sampling["prior"], sampling["strength"]) == ("atlas", 1.0) and "validation split" in card["default_sampling_basis"]
        assert resolve_sampling(card, DEFAULT_SAMPLING, explicit={"prior": "none"})["prior"] == "none"
    else:
        assert "default_sampling" not in card and sampling["prior"] == DEFAULT_SAMPLING["prior"]


def _lrs_logged(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return {int(row["step"]): float(row["value"]) for row in csv.DictReader(handle) if row["name"] == "train/lr"}


def test_a_cosine_schedule_follows_the_run_step_across_a_resume_from_the_snapshot(tmp_path):
    decay = {"lr_schedule": "cosine", "lr_decay_start": 2, "lr_min": 3e-4, "warmup_steps": 0}
    Trainer(resolve_config(_config(tmp_path, steps=4, **decay)), CopyGuessSamples()).run()
    resumed = Trainer(resolve_config(_config(tmp_path, run="elsewhere", steps=8, resume="latest", **decay)),
                      CopyGuessSamples())

    def curve(step: int) -> float:
        return 3e-4 + (3e-3 - 3e-4) * 0.5 * (1 + math.cos(math.pi * max(0, step - 2) / 6))

    # the first step after the resume takes the rate at step 4, not the top of the curve again
    assert resumed.step == 4 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(curve(4), rel=1e-6)
    resumed.run()
    # a rate is computed as a step ends, before the step count moves: the one logged at step s is the curve at s - 1
    expected = {step: curve(step - 1) for step in range(1, 9)}
    # the first run's own curve ended at its step 4: halfway down at step 3
    assert _lrs_logged(tmp_path / "run") == pytest.approx({1: 3e-3, 2: 3e-3, 3: 3e-3, 4: (3e-4 + 3e-3) / 2}, rel=1e-4)
    # the resumed run's log starts with the snapshot's history, then follows its own (longer) curve
    assert _lrs_logged(tmp_path / "elsewhere") == pytest.approx(
        {**_lrs_logged(tmp_path / "run"), **{s: expected[s] for s in range(5, 9)}}, rel=1e-4)
    assert expected[3] == pytest.approx(3e-3) and expected[8] < expected[5] < expected[4]


def test_a_cosine_schedule_refuses_a_decay_that_cannot_happen(tmp_path):
    with pytest.raises(InputError, match="lr_decay_start < train.steps"):
        resolve_config(_config(tmp_path, steps=4, lr_schedule="cosine", lr_decay_start=4))
    with pytest.raises(InputError, match="constant or cosine"):
        resolve_config(_config(tmp_path, lr_schedule="linear"))
