"""Copy what the evaluation suite measured about the shipped model into its card, so that the CLI (`model-info`), the
demo and the Slicer panel can state it next to the output it qualifies instead of a number typed into the code.

    python scripts/record_evaluation_in_card.py [--results benchmarks/results/evaluation] [--model DIR]

Today it records how well the uncertainty map ranks the errors (AUROC of the spread across views against |error|
above its median, inside the brain, input slices excluded; 0.5 = chance), over the default sampling's in-domain runs
of the last suite. It refuses when the suite's runs were made with other weights than the card's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_report  # noqa: E402
from evaluation_suite import model_identity  # noqa: E402
from xdiffusion.model.checkpoint import update_model_card  # noqa: E402
from xdiffusion.model_location import PACKAGED_MODEL  # noqa: E402


class _CardOnly:
    """What `model_identity` reads of a pipeline: the card, without loading any weights."""

    def __init__(self, card: dict):
        self.model = type("Model", (), {"model_card": card})()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "evaluation")
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    args = parser.parse_args()
    card_path = args.model / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    suite, records = make_report.load(args.results)
    model_id = model_identity(_CardOnly(card), args.model)
    if suite["model"] != model_id:
        raise SystemExit(f"the suite's runs are of model {suite['model']}, the card's weights are {model_id}: rerun the suite first")
    ranked = [r["metrics"]["uncertainty_auroc"] for r in make_report.main_table(records, domain="in-domain")
              if r["run"]["method"] == "xdiffusion" and r["metrics"].get("uncertainty_auroc") is not None]
    if not ranked:
        raise SystemExit("the suite holds no uncertainty AUROC for the default sampling")
    evaluation = {
        "uncertainty_auroc": {"mean": round(float(np.mean(ranked)), 3), "std": round(float(np.std(ranked)), 3), "n": len(ranked)},
        "what": "AUROC of the uncertainty map (spread across views) against |error| above its median, inside the brain, "
                "input slices excluded; 0.5 = chance",
        "data": "held-out SRI24 (never trained on), healthy and with synthetic tumours, all planes, K = 1-4",
        "source": f"benchmarks/results/evaluation (grid {suite['grid']}, model id {model_id}); docs/results.md",
    }
    update_model_card(args.model, {"evaluation": evaluation})
    print(f"uncertainty AUROC {evaluation['uncertainty_auroc']} written to {card_path}")


if __name__ == "__main__":
    main()
