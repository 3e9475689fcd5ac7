"""The end-of-training report: validation figures, report.json and the input/decoded picture, at tiny size."""

import json

import matplotlib.image
from conftest import rock_salt, tiny_recipe

from nesfgen.drawing import draw_cells
from nesfgen.metrics import PAPER_METRICS
from nesfgen.report import REPORT_JSON, REPORT_PNG, report_run
from nesfgen.train import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: draw_cells' panel size in inches and save_figure's resolution
PANEL_WIDTH, PANEL_HEIGHT, DPI = 2.3, 3.3, 90


def test_the_report_scores_the_validation_split_and_draws_pairs(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 4}), run_dir)
    report = report_run(run_dir, pairs=3)

    summary = report.summary
    assert summary["split"] == "val" and summary["num_structures"] == 6
    for name in (*PAPER_METRICS, "cdvae_match_rate_pct", "cdvae_spacegroup_match_pct"):
        assert name in summary
    assert json.loads((run_dir / REPORT_JSON).read_text())["num_structures"] == 6

    assert report.picture == run_dir / REPORT_PNG
    assert report.picture.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(report.picture).shape[:2]  # inputs above, decoded cells below
    assert (height, width) == (round(2 * PANEL_HEIGHT * DPI), round(3 * PANEL_WIDTH * DPI))


def test_the_report_decodes_only_the_first_structures(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "estimator.steps": 2}), run_dir)
    report = report_run(run_dir, structures=2, pairs=5)
    assert report.summary["num_structures"] == 2
    height, width = matplotlib.image.imread(report.picture).shape[:2]  # two pairs: fewer structures than asked
    assert (height, width) == (round(2 * PANEL_HEIGHT * DPI), round(2 * PANEL_WIDTH * DPI))


def test_cells_in_two_rows_leave_no_decode_blank(tmp_path):
    path = draw_cells([rock_salt(), rock_salt(5.0), rock_salt(), None], ["a", "b", "a'", "b'"], tmp_path / "x.png", 2)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape[:2] == (round(2 * PANEL_HEIGHT * DPI), round(2 * PANEL_WIDTH * DPI))
