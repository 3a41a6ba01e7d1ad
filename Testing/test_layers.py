"""The layers keep to their rules (docs/architecture.md): the package and the CLI load no torch before they need it,
inference never imports training code, and `XDiffusionPipeline` is importable from the package itself."""

from __future__ import annotations

import subprocess
import sys

TRAINING_MODULES = ("xdiffusion.data.samples", "xdiffusion.data.fetch", "xdiffusion.model.training",
                    "xdiffusion.model.autoencoder_training", "xdiffusion.training_run", "xdiffusion.model.campaign")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(done.stdout.split())


def test_the_package_loads_no_torch_until_the_pipeline_is_asked_for():
    assert "torch" not in _loaded_after("import xdiffusion, xdiffusion.cli")
    loaded = _loaded_after("from xdiffusion import XDiffusionPipeline; assert XDiffusionPipeline.__module__ == 'xdiffusion.pipeline'")
    assert "torch" in loaded


def test_inference_never_imports_training_code():
    loaded = _loaded_after("import xdiffusion.pipeline, xdiffusion.reconstruct, xdiffusion.model_card, xdiffusion.coherent")
    assert not loaded & set(TRAINING_MODULES), sorted(loaded & set(TRAINING_MODULES))


def test_io_and_geometry_know_no_model():
    loaded = _loaded_after("import xdiffusion.io, xdiffusion.nifti, xdiffusion.geometry, xdiffusion.atomic_files")
    assert "torch" not in loaded and not any(name.startswith("xdiffusion.model") for name in loaded)
