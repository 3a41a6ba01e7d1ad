"""Record what the shipped default model scores on the shipped sample, per solver, for the regression test
Testing/test_shipped_model.py (which fails when a change to sampling moves any of them by more than the tolerance).

Re-record whenever the shipped model (its weights or its card's default sampling) changes, and only then:

    python scripts/record_shipped_model_reference.py

Cases: the card's default sampling with one view (so the test runs in seconds) with DPM-Solver++, UniPC and DDIM, and
8 steps from pure noise with DPM-Solver++ and DDIM (where clipping the latents hurt most); fixed seed, two torch
threads. The scores are `xdiffusion.demo.score_on_sample`:
whole-volume PSNR and the brain-volume error of `xdiffusion.evaluate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from xdiffusion.cli import DEFAULT_SAMPLING
from xdiffusion.demo import DEMO_PLANE, SAMPLE_IMAGE, score_on_sample
from xdiffusion.model_card import read_model_card
from xdiffusion.model_location import PACKAGED_MODEL
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.solvers import SOLVERS

REFERENCE = Path(__file__).resolve().parents[1] / "Testing" / "reference" / "shipped_model_reference.json"
COMMAND = "python scripts/record_shipped_model_reference.py"
THREADS = 2
PURE_NOISE_STEPS = 8
PURE_NOISE_SOLVERS = ("dpmsolver++", "ddim")  # the default solver, and the one whose latent clipping hurt most there
TOLERANCE = {"psnr_db": 0.5, "brain_volume_rel_err": 0.05}


def reference_cases(default_sampling: dict) -> list[dict]:
    """(name, sampling) of every case: the card's default with one view, and pure noise, for each solver."""
    default = {**DEFAULT_SAMPLING, **default_sampling, "views": 1}  # as `xdiffusion reconstruct` fills it in
    pure = {**default, "steps": PURE_NOISE_STEPS, "strength": 1.0, "prior": "extrude"}
    return [{"name": f"{kind}/{solver}", "sampling": {**sampling, "solver": solver, "seed": 0}}
            for kind, sampling, solvers in (("default", default, SOLVERS), ("pure-noise", pure, PURE_NOISE_SOLVERS))
            for solver in solvers]


def main() -> None:
    torch.set_num_threads(THREADS)
    card = read_model_card(PACKAGED_MODEL)
    pipeline = XDiffusionPipeline.from_pretrained(PACKAGED_MODEL)
    cases = reference_cases(card.get("default_sampling", {}))
    for case in cases:
        started = time.monotonic()
        scores = score_on_sample(pipeline, **case["sampling"])
        case.update(psnr=round(scores["psnr"], 3), brain_volume_rel_err=round(scores["brain_volume_rel_err"], 4))
        print(f"{case['name']:<24} PSNR {case['psnr']:.2f} dB  brain volume {case['brain_volume_rel_err']:+.3f}  "
              f"({time.monotonic() - started:.0f} s)", flush=True)
    reference = {
        "about": f"the shipped model on {SAMPLE_IMAGE.name} from its middle {DEMO_PLANE} slice; checked by "
                 "Testing/test_shipped_model.py",
        "re_record": COMMAND,
        "model_sha256": card["sha256"],
        "default_sampling": card.get("default_sampling", {}),
        "torch_threads": THREADS,
        "tolerance": TOLERANCE,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": cases,
    }
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, indent=2) + "\n")
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
