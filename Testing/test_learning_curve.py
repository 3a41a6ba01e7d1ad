"""scripts/learning_curve.py: each campaign's curve and table come from its own log and keep their own place in the page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "learning_curve.py"


def _log(path: Path, psnr_at_500: float) -> Path:
    rows = ["step,name,value", "0,autoencoder/psnr,28.5", "450,train/loss,0.25", f"500,val/psnr,{psnr_at_500}",
            "500,val/ssim,0.41", "500,val/sharpness,1.2", "500,val/psnr_extrude,12.2", "500,val/ssim_extrude,0.51",
            "1000,val/psnr,9.0", "1000,val/psnr,13.75"]  # a resumed run logged step 1000 twice: the last one counts
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(log: Path, doc: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(log), "--doc", str(doc), "--name", name],
                          capture_output=True, text=True)


def test_two_campaigns_keep_their_own_curves_and_a_rerun_replaces_only_its_own(tmp_path):
    doc = tmp_path / "model.md"
    doc.write_text("# Model\n\nintro\n\n<!-- learning-curve:detail:start -->\nold\n<!-- learning-curve:detail:end -->\n\noutro\n")
    assert _run(_log(tmp_path / "a.csv", 12.5), doc, "detail").returncode == 0
    assert _run(_log(tmp_path / "b.csv", 11.25), doc, "detail_atlas").returncode == 0
    text = doc.read_text()
    assert "old" not in text and text.index("outro") > text.index("learning-curve:detail:end")
    assert "| 500 | 12.500 | 12.200 | 0.410 | 0.510 | 1.200 | 0.2500 |" in text
    assert "| 500 | 11.250 | 12.200 |" in text and text.index("11.250") > text.index("learning-curve:detail_atlas:start")
    assert "| 1000 | 13.750 |" in text and "9.000" not in text
    assert (tmp_path / "images" / "detail_learning_curve.png").stat().st_size > 0
    assert (tmp_path / "images" / "detail_atlas_learning_curve.png").stat().st_size > 0

    assert _run(_log(tmp_path / "a.csv", 12.75), doc, "detail").returncode == 0
    text = doc.read_text()
    assert "| 500 | 12.750 |" in text and "12.500" not in text and "| 500 | 11.250 |" in text
    assert text.count("learning-curve:detail_atlas:start") == 1


def test_a_missing_log_is_one_line_and_exit_2(tmp_path):
    doc = tmp_path / "model.md"
    doc.write_text("# Model\n")
    result = _run(tmp_path / "none.csv", doc, "detail")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no training log" in result.stderr
    assert doc.read_text() == "# Model\n"


def test_an_atlas_conditioned_run_gets_the_atlas_and_withheld_columns_and_others_do_not(tmp_path):
    doc = tmp_path / "model.md"
    doc.write_text("# Model\n")
    log = _log(tmp_path / "atlas.csv", 14.5)
    with log.open("a") as handle:
        handle.write("500,val/psnr_atlas,13.125\n500,val/psnr_atlas_withheld,12.375\n")
    assert _run(log, doc, "detail_atlas").returncode == 0
    assert _run(_log(tmp_path / "plain.csv", 12.5), doc, "detail").returncode == 0
    atlas_block, plain_block = doc.read_text().split("learning-curve:detail:start")
    assert "atlas PSNR | PSNR, atlas withheld |" in atlas_block and "| 500 | 14.500 | 12.200 | 0.410 | 0.510 | 1.200 | 13.125 | 12.375 | 0.2500 |" in atlas_block
    plain_table = plain_block.split("learning-curve:detail:end")[0]
    assert "atlas PSNR" not in plain_table and "| 500 | 12.500 | 12.200 | 0.410 | 0.510 | 1.200 | 0.2500 |" in plain_table
