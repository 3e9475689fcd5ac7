"""The report at the end of training: how well the kept model reconstructs the validation split.

A loss value says little to someone seeing nesfgen for the first time. Decoding the validation
structures and scoring them as ``nesfgen evaluate`` does (the paper's metrics and StructureMatcher)
gives figures that can be judged, and a picture of a few input cells beside their decoded cells
shows at a glance whether the model works. Only the first REPORT_STRUCTURES validation structures
are decoded, so that the report stays short after a long run on a big dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.checkpoint import read_checkpoint
from nesfgen.config import Recipe, from_dict
from nesfgen.drawing import draw_cells
from nesfgen.evaluate import EvaluateOptions, Evaluation, evaluate
from nesfgen.files import atomic_write_text
from nesfgen.machine import resolve_device
from nesfgen.progress import Progress
from nesfgen.train import TrainResult

#: validation structures decoded for the report (the built-in dataset's split has 124)
REPORT_STRUCTURES = 128
#: input/decoded pairs drawn
REPORT_PAIRS = 5
REPORT_JSON = "report.json"
REPORT_PNG = "reconstruction.png"


@dataclass(frozen=True)
class TrainingReport:
    """The evaluation summary of the validation structures and the files written into the run folder."""

    summary: dict[str, Any]
    picture: Path
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary, "picture": str(self.picture), "report": str(self.path)}


def report_run(
    run_dir: Path, structures: int = REPORT_STRUCTURES, pairs: int = REPORT_PAIRS, progress: Progress | None = None
) -> TrainingReport:
    """Decode the first ``structures`` validation structures with ``run_dir/best.pt``; write report.json and a PNG.

    The PNG draws ``pairs`` structures spread over the decoded ones, each input above its decoded cell.
    """
    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir)
    recipe = from_dict(Recipe, state["recipe"], where=state["path"])
    device = str(resolve_device(recipe.train.device, "train.device"))
    options = EvaluateOptions(checkpoint=str(run_dir), split=recipe.data.val_split, limit=structures, device=device)
    evaluation = evaluate(options, progress)
    picture = draw_pairs(evaluation, run_dir / REPORT_PNG, pairs)
    path = atomic_write_text(run_dir / REPORT_JSON, json.dumps(evaluation.summary, indent=1, default=str))
    return TrainingReport(evaluation.summary, picture, path)


def draw_pairs(evaluation: Evaluation, path: Path, pairs: int = REPORT_PAIRS) -> Path:
    """Inputs in the top row, their decoded cells below, for ``pairs`` structures evenly spread over the split."""
    count = len(evaluation.truth)
    chosen = sorted(set(np.linspace(0, count - 1, min(pairs, count)).round().astype(int).tolist()))
    inputs = [evaluation.truth[i] for i in chosen]
    decoded = [evaluation.decoded[i] for i in chosen]
    rows = [evaluation.rows[i] for i in chosen]
    titles = [
        f"input {row['id']}\n{crystal.formula}\n{_group(row['input_spacegroup'])}" for row, crystal in zip(rows, inputs)
    ]
    titles += [
        f"decoded\n{crystal.formula}\n{_group(row['decoded_spacegroup'])}" if crystal else "decoded"
        for row, crystal in zip(rows, decoded)
    ]
    return draw_cells([*inputs, *decoded], titles, path, rows=2)


def _group(number: int | None) -> str:
    return f"space group {number}" if number else "no space group"


def training_summary(result: TrainResult) -> dict[str, Any]:
    """What ``nesfgen train`` reports of a finished run (before its reconstruction report)."""
    return {
        "run_dir": str(result.run_dir),
        "dataset": result.dataset,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stop_reason": result.stop_reason,
        "seconds": round(result.seconds, 1),
        "parameters": result.parameters,
        "last": result.last_row,
        "lattice_refit": result.lattice_refit,
    }
