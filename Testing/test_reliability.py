"""Reliability and safety beyond single bad inputs: nothing unsafe is loaded, interrupted training resumes to the same
state as an uninterrupted run, the same seed gives the same file, concurrent runs do not interfere, and DICOM patient
identifiers never leave the input.
"""

from __future__ import annotations

import csv
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import oriented_volume, smooth_head
from fuzz_helpers import run_main, run_process, save_tiny_model, start_process
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file
from test_io import write_dicom_series

from xdiffusion.io import read_image, write_volume

PACKAGE = Path(__file__).resolve().parents[1] / "XDiffusionLib" / "xdiffusion"
SLICER_MODULE = Path(__file__).resolve().parents[1] / "XDiffusion"


# --- nothing unsafe is loaded --------------------------------------------------------------------------------------


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(SLICER_MODULE.rglob("*.py"))


def test_no_pickle_loading_anywhere_in_the_package():
    """Weights are safetensors only: no pickle, torch.load only with weights_only=True (legacy EMA checkpoints),
    np.load always allow_pickle=False, diffusers from_pretrained always use_safetensors=True, YAML always safe_load,
    no eval/exec."""
    offences = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            where = f"{path.relative_to(PACKAGE.parents[1])}:{number}: {line.strip()}"
            if re.search(r"\bimport pickle\b|\bpickle\.|\bcPickle\b|\bdill\b|\bjoblib\b", code):
                offences.append(where)
            if "torch.load" in code and "weights_only=True" not in code:  # the restricted unpickler only
                offences.append(where)
            if "yaml.load(" in code or "yaml.unsafe_load" in code or re.search(r"(?<![\w.])(eval|exec)\(", code):
                offences.append(where)
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in call.group(1):
                offences.append(f"{path.name}: np.load without allow_pickle=False: {call.group(0)}")
        for call in re.finditer(r"\w+\.from_pretrained\((?:[^()]|\([^()]*\))*\)", text):
            if "XDiffusionPipeline.from_pretrained" in call.group(0) or call.group(0).startswith("cls."):
                continue  # our own loader: load_model, safetensors with SHA-256 checks
            if "use_safetensors=True" not in call.group(0):
                offences.append(f"{path.name}: from_pretrained without use_safetensors=True: {call.group(0)[:80]}")
    assert offences == []


def test_checkpoint_ema_is_safetensors_and_older_pickled_ema_still_resumes(tmp_path):
    """The EMA in a checkpoint is safetensors; a checkpoint from before (accelerate's custom_checkpoint_0.pkl) is
    read with the restricted unpickler (weights_only=True) and gives the same EMA."""
    from test_training import CopyGuessSamples, _config

    from xdiffusion.model.training import Trainer, resolve_config

    first = Trainer(resolve_config(_config(tmp_path, steps=2, checkpoint_every=2, validate_every=100)), CopyGuessSamples())
    first.run()
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    assert (checkpoint / "ema.safetensors").is_file() and not (checkpoint / "custom_checkpoint_0.pkl").exists()
    resumed = Trainer(resolve_config(_config(tmp_path, steps=2, resume="latest")), CopyGuessSamples())
    assert all(torch.equal(p, q) for p, q in zip(first.ema.shadow_params, resumed.ema.shadow_params))
    torch.save(first.ema.state_dict(), checkpoint / "custom_checkpoint_0.pkl")
    (checkpoint / "ema.safetensors").unlink()
    legacy = Trainer(resolve_config(_config(tmp_path, steps=2, resume="latest")), CopyGuessSamples())
    assert all(torch.equal(p, q) for p, q in zip(first.ema.shadow_params, legacy.ema.shadow_params))
    assert legacy.ema.optimization_step == first.ema.optimization_step == 2


# --- interrupted training ------------------------------------------------------------------------------------------


def _losses(run: Path) -> dict[int, str]:
    with open(run / "metrics.csv") as handle:
        return {int(row["step"]): row["value"] for row in csv.DictReader(handle) if row["name"] == "train/loss"}


def _train_argv(config: Path, run: Path, *extra: str) -> list[str]:
    return ["train", str(config), f"train.output_dir={run}", *extra]


def test_training_killed_after_a_checkpoint_resumes_to_the_same_state(tmp_path):
    """SIGKILL `xdiffusion train` once a checkpoint exists, resume from it: same step, optimizer, EMA and weights
    as an uninterrupted run with the same seed, and the loss curve continues bit for bit (CPU)."""
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    for number in range(3):
        write_volume(oriented_volume(smooth_head((24, 26, 22), seed=number), np.eye(3), spacing=(2.0, 2.0, 2.0)),
                     volumes / f"subject{number}.nii.gz")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {preset: tiny, modalities: [t1]}\n"
        "train: {steps: 12, batch_size: 4, validate_every: 1000, checkpoint_every: 4, log_every: 1, warmup_steps: 3,"
        " keep_checkpoints: 5, lr: 0.002}\n"
        f"data: {{source: 'folder:{volumes}', variants_per_subject: 2, validation_samples: 2, validation_steps: 1,"
        f" cube_cache: '{tmp_path / 'cubes'}'}}\n")
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    reference = start_process(_train_argv(config, whole))
    victim = start_process(_train_argv(config, interrupted))
    deadline = time.monotonic() + 300
    # kill between checkpoints (step 4 saved, step 6 logged): the killed run logged steps the resumed one redoes
    while not ((interrupted / "checkpoints" / "step-4" / "train_step.json").is_file()
               and (interrupted / "metrics.csv").is_file() and max(_losses(interrupted), default=0) >= 6):
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (interrupted / "model").exists()
    killed_at = max(_losses(interrupted))
    assert killed_at < 12
    resumed = run_process(_train_argv(config, interrupted, "train.resume=latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    assert _losses(interrupted) == _losses(whole) and sorted(_losses(whole)) == list(range(1, 13))
    for name in ("model/unet/diffusion_pytorch_model.safetensors", "model/condition_encoder/model.safetensors",
                 "checkpoints/step-12/model.safetensors"):
        a, b = load_file(whole / name), load_file(interrupted / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(run / "checkpoints/step-12/optimizer.bin", weights_only=True) for run in (whole, interrupted))
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        for part in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][key][part], b["state"][key][part])
    print(f"killed after step {killed_at}; resumed; losses and weights identical")


# --- determinism, concurrency, privacy -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("reliability-model") / "tiny")


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    volume = oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.int16), np.diag([-1.0, -1.0, 1.0]), spacing=(1.2, 1.0, 2.5))
    return write_volume(volume, tmp_path_factory.mktemp("reliability-input") / "input.nii.gz")


def test_same_seed_same_bytes_with_views_and_guidance(tmp_path, model_dir, volume_path):
    """CPU: the same seed gives byte-identical files, with 3 views and guidance != 1 (segmentation and uncertainty
    too); another seed gives another volume."""
    outputs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        paths = [tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz", tmp_path / f"{name}_unc.nii.gz"]
        code, _, err = run_main(["reconstruct", volume_path, "-o", paths[0], "--segmentation-output", paths[1],
                                 "--uncertainty-output", paths[2], "--model", model_dir, "--views", "3",
                                 "--guidance", "2.5", "--steps", "3", "--seed", seed, "--quiet", "--device", "cpu"])
        assert code == 0, err
        outputs[name] = [p.read_bytes() for p in paths]
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][0] != outputs["c"][0]


def test_three_concurrent_reconstructions_into_one_folder_equal_the_sequential_ones(tmp_path, model_dir, volume_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    jobs = [("0", "axial"), ("1", "coronal"), ("2", "sagittal")]

    def argv(seed, plane, name):
        return ["reconstruct", volume_path, "-o", folder / f"{name}.nii.gz", "--uncertainty-output",
                folder / f"{name}_unc.nrrd", "--model", model_dir, "--seed", seed, "--plane", plane, "--quiet",
                "--device", "cpu", "--precision", "float32"]  # the child processes are not pinned by conftest

    for seed, plane in jobs:
        code, _, err = run_main(argv(seed, plane, f"sequential{seed}"))
        assert code == 0, err
    processes = [start_process(argv(seed, plane, f"concurrent{seed}")) for seed, plane in jobs]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    for seed, _ in jobs:
        for suffix in (".nii.gz", "_unc.nrrd"):
            assert (folder / f"concurrent{seed}{suffix}").read_bytes() == (folder / f"sequential{seed}{suffix}").read_bytes()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


PATIENT = {"0010|0010": "Doe^Jane^Quincy", "0010|0020": "PID-7734-XQ", "0010|0030": "19510417",
           "0008|0080": "St Elsewhere Infirmary", "0008|0090": "Dr^Strangelove",
           "0008|103e": "Series of Jane Doe", "0020|4000": "Comment naming Quincy Doe"}


def test_dicom_patient_identifiers_never_leave_the_input(tmp_path, model_dir):
    """Names and IDs from the DICOM header appear in no output byte, log line or file name."""
    volume = oriented_volume((smooth_head((16, 18, 12)) * 3).astype(np.int16), np.eye(3), spacing=(1.1, 1.2, 2.0))
    series = tmp_path / "series"
    write_dicom_series(series, volume, "1.2.826.0.1.3680043.2.1125.77")
    import SimpleITK as sitk

    for path in series.iterdir():  # put identifiers into every file's header
        image = sitk.ReadImage(str(path))
        for tag, value in PATIENT.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(image)
    assert PATIENT["0010|0020"].encode() in next(series.iterdir()).read_bytes()
    assert read_image(series).metadata.get("description", "") == ""  # nothing from the header is carried over

    out = tmp_path / "out"
    out.mkdir()
    runs = [
        ["reconstruct", series, "-o", out / "extrude.nrrd", "--method", "extrude", "--progress", "json"],
        ["reconstruct", series, "-o", out / "model.nii.gz", "--segmentation-output", out / "seg.mha",
         "--uncertainty-output", out / "unc.nrrd", "--model", model_dir, "--progress", "text"],
    ]
    texts = []
    for argv in runs:
        code, stdout, stderr = run_main(argv)
        assert code == 0, stderr
        texts += [stdout, stderr]
    process = run_process([*runs[0][:3], out / "p.mha", "--method", "extrude"])
    assert process.returncode == 0
    texts += [process.stdout, process.stderr]
    names = [p.name for p in out.iterdir()]
    assert sorted(names) == ["extrude.json", "extrude.nrrd", "model.json", "model.nii.gz", "p.json", "p.mha", "seg.json", "seg.mha",
                             "unc.json", "unc.nrrd"]  # each volume with its provenance sidecar
    secrets = [value for value in PATIENT.values()] + [part for value in PATIENT.values() for part in value.split("^")]
    for secret in secrets:
        assert not any(secret in text for text in texts), secret
        assert not any(secret in name for name in names), secret
        for path in out.iterdir():
            if path.suffix == ".json" or len(secret) >= 4:  # 2-3 bytes turn up by chance in compressed image data
                assert secret.encode() not in path.read_bytes(), (secret, path.name)
    import gzip

    plain = gzip.decompress((out / "model.nii.gz").read_bytes())  # compressed bytes could hide a match
    assert not any(secret.encode() in plain for secret in secrets)
    np.testing.assert_array_equal(read_image(out / "extrude.nrrd").array[:, :, 6], volume.array[:, :, 6])


def test_a_model_that_produces_nan_writes_nothing(tmp_path, volume_path):
    """A verified model folder whose weights hold NaN (hashes match: saved that way) is refused after sampling with
    one line; no output is written."""
    from test_pipeline import tiny_model

    from xdiffusion.model import save_model

    model = tiny_model()
    with torch.no_grad():
        model.unet.conv_out.bias.fill_(float("nan"))
    folder = save_model(tmp_path / "nan-model", model.unet, model.condition_encoder, None, model.scheduler_config,
                        model.config, {"default_sampling": {"views": 1, "steps": 1}, "default_modality": "t1"})
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_main(["reconstruct", volume_path, "-o", out / "v.nii.gz", "--model", folder, "--quiet"])
    assert code == 2 and err.startswith("error: the model produced NaN") and len(err.splitlines()) == 1, err
    assert list(out.iterdir()) == []
