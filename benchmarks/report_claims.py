"""The paper's claims tested on the cached runs, each with its numbers and a computed verdict, and the minutes each
grid would take at the measured rates (`make_report.py`)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from paired_differences import MIN_SUBJECTS
from report_data import MODEL_METHODS, PAPER, main_table, select, stat, values


def _claims(records: list[dict], suite_segments: Optional[bool] = None) -> list[str]:
    """The paper's claims we can test here, each with its numbers and a verdict computed from them."""
    main = main_table(records, domain="in-domain")
    claims = []

    def m(method, k, key="psnr", **where):
        return stat(select(main, method=method, k=k, **where), key)

    subjects = len({r["run"].get("subject", "sri24") for r in main})  # the standard grid: SRI24 alone, its tumour seeds are cases

    def verdict(a, b, better_when_larger=True):
        if a[0] is None or b[0] is None:
            return None
        if subjects < MIN_SUBJECTS:  # cases of one brain cannot tell a method from the luck of which brain it was
            return f"no verdict (too few subjects: {subjects}, a verdict needs {MIN_SUBJECTS})"
        diff = a[0] - b[0] if better_when_larger else b[0] - a[0]
        spread = max(a[1] or 0.0, b[1] or 0.0)
        return "yes" if diff > spread else ("no" if diff < -spread else "within the spread")

    def n(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    x1, x3 = m("xdiffusion", 1), m("xdiffusion", 3)
    s1, s3 = m("xdiffusion", 1, "ssim"), m("xdiffusion", 3, "ssim")
    u1, u3 = m("xdiffusion", 1, "psnr_slice_unseen"), m("xdiffusion", 3, "psnr_slice_unseen")
    if x1[0] is not None and x3[0] is not None:
        claims.append(f"**More input slices help** (paper: +1.0 dB PSNR and +0.025 SSIM from K = 1 to 3). Ours: PSNR "
                      f"{n(x1[0])} → {n(x3[0])} dB (3D), per-slice PSNR on unseen slices {n(u1[0])} → {n(u3[0])} dB, "
                      f"SSIM {n(s1[0], 3)} → {n(s3[0], 3)}. Improvement beyond the spread: {verdict(x3, x1)}.")
    o1 = m("official", 1)
    if x1[0] is not None and o1[0] is not None:
        claims.append(f"**Our batched multi-view sampler vs the official sampling on the same model** (K = 1): "
                      f"{n(x1[0])} ± {n(x1[1])} dB vs {n(o1[0])} ± {n(o1[1])} dB (n = {x1[2]}, {o1[2]}). Ours better beyond the spread: {verdict(x1, o1)}.")
    for baseline in ("atlas", "extrude"):
        b1 = m(baseline, 1)
        if x1[0] is not None and b1[0] is not None:
            claims.append(f"**The diffusion model beats the {baseline} baseline from one slice**: {n(x1[0])} vs {n(b1[0])} dB "
                          f"PSNR, SSIM {n(s1[0], 3)} vs {n(m(baseline, 1, 'ssim')[0], 3)}. Beyond the spread: {verdict(x1, b1)}.")
    p1 = m("pure", 1)
    if p1[0] is not None:
        e1 = m("extrude", 1)
        claims.append(f"**The model alone, from pure noise (no atlas prior)**, K = 1: {n(p1[0])} dB PSNR, SSIM "
                      f"{n(m('pure', 1, 'ssim')[0], 3)}, against extrude {n(e1[0])} dB / {n(m('extrude', 1, 'ssim')[0], 3)}: "
                      f"better PSNR beyond the spread: {verdict(p1, e1)}; better SSIM beyond the spread: "
                      f"{verdict(m('pure', 1, 'ssim'), m('extrude', 1, 'ssim'))}. The default's gain over this row is what the "
                      "atlas prior adds.")
    i3 = m("interpolate", 3)
    if x3[0] is not None and i3[0] is not None:
        claims.append(f"**Beats slice interpolation with K = 3**: {n(x3[0])} vs {n(i3[0])} dB. Beyond the spread: {verdict(x3, i3)}.")
    views = select(records, "views")
    if views:
        by_n = sorted({r["run"]["sampling"]["views"] for r in views})
        first, last = stat([r for r in views if r["run"]["sampling"]["views"] == by_n[0]], "psnr"), stat([r for r in views if r["run"]["sampling"]["views"] == by_n[-1]], "psnr")
        claims.append(f"**Averaging more views helps** (the paper's multi-view fusion): N = {by_n[0]}: {n(first[0])} dB, "
                      f"N = {by_n[-1]}: {n(last[0])} dB. Beyond the spread: {verdict(last, first)}.")
    dice = [r for r in main if r["run"].get("tumour_seed") is not None and r["metrics"].get("dice_wt") is not None and r["run"]["method"] == "xdiffusion"]
    if dice:
        d1 = stat([r for r in dice if r["run"]["k"] == 1], "dice_wt")
        d3 = stat([r for r in dice if r["run"]["k"] == 3], "dice_wt")
        carried = (d1[0] or 0.0) >= 0.1 or (d3[0] or 0.0) >= 0.1
        claims.append(("**The tumour is carried into 3D**" if carried else "**Not reproduced: the tumour is not carried into 3D**")
                      + " (the paper shows tumour profiles; it reports no Dice): whole-tumour "
                      f"Dice {n(d1[0])} ± {n(d1[1])} (K = 1), {n(d3[0])} ± {n(d3[1])} (K = 3). "
                      "A synthetic tumour crossing the input slice, not a real one.")
    if suite_segments is False:
        claims.append("**Not reproduced: the tumour is not carried into 3D.** The model's card says it does not segment "
                      "tumours (its autoencoder reproduces no tumour label on held-out slices), so its label maps are "
                      "always empty; they are not scored, and the tables show – for its Dice.")
    claims.append("**Absolute numbers are not comparable** with the paper's (" + PAPER + "): different data (an atlas "
                  "average, 2 mm, T1), a small model (64³ cube) trained on 2 CPU cores, and a different PSNR scaling. "
                  "Compare trends only.")
    if not any(r["run"]["method"] in MODEL_METHODS for r in main):
        claims.append("**Every claim about the model is pending**: no model run is made yet (see the status line at the top).")
    claims.append("**Out of reach here**: body MRI and knee (the paper's other domains): no such data is available "
                  "in this environment, so no claim about them is tested.")
    return claims


def _estimates(records: list[dict], suite: dict) -> list[tuple[str, int, float]]:
    """Minutes each grid would take at the rates measured here (sampling cost + fixed part, baselines' mean)."""
    costs = suite.get("grid_costs")
    model = [r for r in records if r["run"]["method"] in MODEL_METHODS]
    if not costs or len(model) < 2:
        return []
    units = np.array([r["run"]["sampling"]["views"] * r["run"]["sampling"]["steps"] * (1 if float(r["run"]["sampling"]["guidance"]) == 1.0 else 2) for r in model], dtype=float)
    seconds = np.array([r.get("wall_seconds", r["seconds"]) for r in model], dtype=float)
    if np.ptp(units) == 0:
        return []
    slope, intercept = np.polyfit(units, seconds, 1)
    atlas = values([r for r in records if r["run"]["method"] == "atlas"], "wall_seconds")
    other = values([r for r in records if r["run"]["method"] in ("extrude", "interpolate")], "wall_seconds")
    found = []
    for name, cost in costs.items():
        total = intercept * cost["model_runs"] + slope * cost["cost_units"]
        total += cost["atlas_runs"] * (atlas.mean() if atlas.size else 0.0)
        total += (cost["runs"] - cost["model_runs"] - cost["atlas_runs"]) * (other.mean() if other.size else 0.0)
        found.append((name, cost["runs"], total / 60.0))
    return found
