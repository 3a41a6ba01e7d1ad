"""A model folder's card read on its own, without torch or the networks: what a caller checks before any work
(`segments_tumours` before a segmentation is asked for), the sampling a run uses (`resolve_sampling`: the card's
defaults, a preset, the caller's explicit options) and what `xdiffusion model-info` prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from .checksums import sha256_file
from .errors import InputError, ModelError

PRESETS = ("fast", "balanced", "best")
PRESET_KEYS = ("views", "steps", "samples", "coherent")  # what a preset chooses; the prior and strength stay the card's


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


def check_segments_tumours(model: Optional[str], flag: str) -> None:
    """Refuse a segmentation before any work when the model's card says it draws none (its labels would be empty)."""
    from .model_location import resolve_model_dir

    folder = resolve_model_dir(model)
    if segments_tumours(read_model_card(folder)) is False:
        raise InputError(f"{flag}: this model ({folder.name}) does not segment tumours (its model card says "
                         f"segments_tumours: false, so its labels would be empty); drop {flag}")


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


def card_presets(card: dict[str, Any], default_sampling: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The card's ``presets`` ({fast, balanced, best} -> {views, steps, samples, coherent}); a card without them (or
    missing one, or a key of one) gets them derived from its default sampling (``default_sampling``: the caller's
    defaults, the card's over them) by the rule docs/model.md states, measured on the first (64³) default: balanced =
    the default sampling; fast = a quarter of the views and half the steps; best = twice the views; one sample, the
    views averaged, in all three."""
    sampling = {**default_sampling, **(card.get("default_sampling") or {})}
    views, steps = int(sampling.get("views", 4)), int(sampling.get("steps", 12))
    derived = {
        "fast": {"views": max(1, views // 4), "steps": max(1, steps // 2), "samples": 1, "coherent": False},
        "balanced": {"views": views, "steps": steps, "samples": 1, "coherent": False},
        "best": {"views": 2 * views, "steps": steps, "samples": 1, "coherent": False},
    }
    given = card.get("presets") if isinstance(card.get("presets"), dict) else {}
    return {name: {**derived[name], **{key: value for key, value in (given.get(name) or {}).items() if key in PRESET_KEYS}}
            for name in PRESETS}


def resolve_sampling(card: dict[str, Any], default_sampling: dict[str, Any], preset: Optional[str] = None,
                     explicit: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The sampling a run uses: ``default_sampling`` (the caller's), the card's ``default_sampling`` over it, the
    ``preset``'s choices over that, and the ``explicit`` options (None: not given) over everything.

    ``prior: none`` is the model alone, from pure noise: it sets strength 1 unless a strength was given, and an
    explicit strength below 1 with it is refused (`InputError`), as is an explicit strength below 1 with nothing to
    start from."""
    explicit = {key: value for key, value in (explicit or {}).items() if value is not None}
    sampling = {**default_sampling, **(card.get("default_sampling") or {})}
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        sampling.update(card_presets(card, default_sampling)[preset])
    sampling.update(explicit)
    if sampling.get("prior") == "none":
        if "strength" in explicit and explicit["strength"] < 1.0:
            what = "--prior none" if "prior" in explicit else "the model card's prior none"
            raise InputError(f"{what} samples from pure noise (strength 1), so --strength {explicit['strength']:g} has "
                             f"nothing to start from; drop --strength or give --prior extrude|atlas")
        sampling["strength"] = 1.0
    if int(sampling.get("samples", 1)) < 1:
        raise InputError(f"samples must be at least 1, got {sampling['samples']}")
    return {key: sampling[key] for key in default_sampling}


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
        "presets": card_presets(card, default_sampling),
        "presets_from_card": isinstance(card.get("presets"), dict),
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


def _preset(values: dict[str, Any]) -> str:
    samples = values.get("samples", 1)
    kind = "coherent" if values.get("coherent") else "averaged"
    views = values.get("views")
    return f"{views} view{'s' if views != 1 else ''} x {values.get('steps')} steps, {samples} {kind} sample{'s' if samples != 1 else ''}"


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
        ("presets", "; ".join(f"{name} {_preset(values)}" for name, values in summary["presets"].items())
         + ("" if summary["presets_from_card"] else " (derived from the sampling: the card sets none)")),
        ("segments tumours", segments),
        ("training steps", str(summary["training_steps"])),
        ("validation", _numbers(summary["validation"])),
        ("autoencoder", _numbers(summary["autoencoder"]) if summary["latent"] else "none (pixel space)"),
        ("uncertainty AUROC", "not measured" if auroc is None else f"{auroc:.3f}" + (
            f" (± {spread['std']:.3f} over {spread['n']} held-out runs)" if {"std", "n"} <= set(spread) else "")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
