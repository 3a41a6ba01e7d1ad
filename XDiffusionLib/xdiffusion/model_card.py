"""A model folder's card read on its own, without torch or the networks: what a caller checks before any work
(`segments_tumours` before a segmentation is asked for) and what `xdiffusion model-info` prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from .data.fetch import sha256_file  # one checksum routine for data and weights
from .errors import ModelError


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model folder is incomplete: {path} is missing") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def read_model_card(folder: Union[str, Path]) -> dict[str, Any]:
    return _read_object(Path(folder) / "model_card.json")


def segments_tumours(card: dict[str, Any]) -> Optional[bool]:
    """True or false as the card says; None for a card that predates the field (nothing measured either way)."""
    value = card.get("segments_tumours")
    return value if isinstance(value, bool) else None


def weight_problems(folder: Union[str, Path], card: dict[str, Any]) -> list[str]:
    """Each weight file the card lists that is missing or differs from its SHA-256 there (empty: all verified)."""
    folder, hashes = Path(folder), card.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        return ["the model card lists no weight hashes"]
    problems = []
    for name, digest in sorted(hashes.items()):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(folder / name) != digest:
            problems.append(f"{name} does not match its SHA-256")
    return problems


def _uncertainty_auroc(card: dict[str, Any]) -> Optional[float]:
    """The uncertainty map's measured AUROC where the card records one (`scripts/record_evaluation_in_card.py` writes
    `evaluation.uncertainty_auroc` as {mean, std, n}; a plain number is read too)."""
    evaluation = card.get("evaluation") if isinstance(card.get("evaluation"), dict) else {}
    for value in (evaluation.get("uncertainty_auroc"), card.get("uncertainty_auroc")):
        value = value.get("mean") if isinstance(value, dict) else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def model_summary(folder: Union[str, Path], default_sampling: dict[str, Any]) -> dict[str, Any]:
    """The card's facts a caller decides on (``default_sampling``: the sampling used where the card sets none)."""
    folder = Path(folder)
    card = read_model_card(folder)
    config = _read_object(folder / "xdiffusion_config.json")
    problems = weight_problems(folder, card)
    modalities = list(config.get("modalities") or [])
    return {
        "model_dir": str(folder.absolute()),
        "id": card.get("id") or folder.absolute().name,
        "sha256_ok": not problems,
        "sha256_problems": problems,
        "cube_size": config.get("cube_size"),
        "latent": config.get("latent"),
        "modalities": modalities,
        "default_modality": card.get("default_modality", modalities[0] if modalities else None),
        "default_sampling": {**default_sampling, **(card.get("default_sampling") or {})},
        "segments_tumours": segments_tumours(card),
        "segments_tumours_basis": card.get("segments_tumours_basis"),
        "training_steps": card.get("steps"),
        "validation": card.get("validation") or {},
        "autoencoder": card.get("autoencoder"),
        "uncertainty_auroc": _uncertainty_auroc(card),
        "evaluation": card.get("evaluation"),
        "intended_use": card.get("intended_use"),
    }


def _numbers(values: Any) -> str:
    if not isinstance(values, dict) or not values:
        return "none recorded"
    shown = [f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {'n/a' if value is None else value}"
             for key, value in values.items() if value is None or isinstance(value, (int, float))]  # not the notes
    return ", ".join(shown)


def format_model_summary(summary: dict[str, Any]) -> str:
    """`model_summary` as aligned lines for a terminal."""
    segments = {True: "yes", False: "no", None: "unknown (the card predates the field)"}[summary["segments_tumours"]]
    if summary["segments_tumours_basis"]:
        segments += f" ({summary['segments_tumours_basis']})"
    sampling = summary["default_sampling"]
    auroc, evaluation = summary["uncertainty_auroc"], summary["evaluation"] or {}
    spread = evaluation.get("uncertainty_auroc") if isinstance(evaluation.get("uncertainty_auroc"), dict) else {}
    rows = [
        ("model", f"{summary['id']}  {summary['model_dir']}"),
        ("weights", "SHA-256 verified" if summary["sha256_ok"] else "NOT VERIFIED: " + "; ".join(summary["sha256_problems"])),
        ("cube", f"{summary['cube_size']}^3 ({'latent' if summary['latent'] else 'pixel'} diffusion)"),
        ("modalities", f"{', '.join(summary['modalities'])} (default {summary['default_modality']})"),
        ("sampling", ", ".join(f"{key} {value}" for key, value in sampling.items())),
        ("segments tumours", segments),
        ("training steps", str(summary["training_steps"])),
        ("validation", _numbers(summary["validation"])),
        ("autoencoder", _numbers(summary["autoencoder"]) if summary["autoencoder"] is not None else "none (pixel space)"),
        ("uncertainty AUROC", "not measured" if auroc is None else f"{auroc:.3f}" + (
            f" (± {spread['std']:.3f} over {spread['n']} held-out runs)" if {"std", "n"} <= set(spread) else "")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
