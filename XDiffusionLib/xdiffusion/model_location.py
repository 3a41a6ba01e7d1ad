"""Where the model comes from: `--model DIR`, then `$XDIFFUSION_MODEL_DIR`, then the default shipped in the package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import ModelError

PACKAGED_MODEL = Path(__file__).resolve().parent / "default_model"


def resolve_model_dir(explicit: Optional[str] = None) -> Path:
    for candidate, origin in ((explicit, "--model"), (os.environ.get("XDIFFUSION_MODEL_DIR"), "XDIFFUSION_MODEL_DIR")):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path / "model_index.json").is_file():
                raise ModelError(f"{origin} {path} is not an XDiffusion model folder (no model_index.json)")
            return path
    if not (PACKAGED_MODEL / "model_index.json").is_file():
        raise ModelError("no default model is installed with this package; pass --model DIR (see README: training)")
    return PACKAGED_MODEL
