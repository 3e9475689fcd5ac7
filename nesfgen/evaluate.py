"""Reconstruction evaluation: encode a split, decode it with the estimator, score it as the paper does."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from nesfgen.checkpoint import DEFAULT_MODEL, TrainedModel, load_model
from nesfgen.config import EstimatorConfig, apply_overrides
from nesfgen.crystal import Crystal, lattice_matrix
from nesfgen.data.names import resolve_dataset
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.estimator import Decoded, ExactField, estimate
from nesfgen.files import atomic_write_text, new_figure, output_folder, safe_file_stems, save_figure
from nesfgen.metrics import (
    PAPER_METRICS,
    cdvae_metrics,
    mean_over_structures,
    mean_std,
    pool_over_atoms,
    structure_metrics,
)
from nesfgen.model import encode_all
from nesfgen.sampling import TensorSet, atoms_bounding_box
from nesfgen.symmetry import STATED_SYMPREC, TOLERANCES, check_symprec, recovery_rates, symmetrize_decoded

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: The paper's Table 1 (mean over 10 seeds, or 20 folds for YBCO-like), for side-by-side reports.
PAPER_TABLE1 = {
    "icsg3d": (0.53, 0.0308, 0.0359, 4.31, 4.36, 0.27, 0.37),
    "lcs6": (6.35, 0.1161, 0.1632, 14.78, 16.11, 0.05, 0.19),
    "ybco": (12.00, 0.2631, 0.2448, 14.78, 19.89, 0.25, 2.91),
}
METRIC_LABELS = {
    "atom_count_error_pct": "error in number of atoms [%]",
    "position_error_actual": "position error, actual [Å]",
    "position_error_detected": "position error, detected [Å]",
    "species_error_actual_pct": "species error, actual [%]",
    "species_error_detected_pct": "species error, detected [%]",
    "length_error": "lattice length error [Å]",
    "angle_error": "lattice angle error [deg]",
}

#: Under every table of both aggregations: what the two columns mean.
AGGREGATION_NOTE = (
    "Pooled over atoms is how the paper's public code computes Table 1 (per-atom distances and species "
    "hits of all structures averaged once; an empty decode counts its atoms at infinite distance and "
    "with wrong species); compare with the paper there. The per-structure mean averages each structure "
    "first and leaves empty decodes out of the position and species errors."
)


@dataclass
class Evaluation:
    """Everything one evaluation produced.

    ``summary["reference"]`` holds the paper's seven pooled over atoms as the paper's code computes
    Table 1 (compare with the paper only there); the summary's top-level figures of the same names
    are per-structure means.
    """

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    truth: list[Crystal]
    decoded: list[Crystal | None]


def encode(trained: TrainedModel, crystals: CrystalSet, batch_size: int = 256) -> Tensor:
    """(S, D) latents of every structure of a split, in eval mode; warns about inputs unlike the training data."""
    warn_outside_training(trained, crystals)
    device = next(trained.model.parameters()).device
    return encode_all(trained.model, TensorSet(crystals, trained.species_table, device), batch_size)


def training_atom_range(trained: TrainedModel) -> tuple[int, int] | None:
    """Fewest and most atoms per cell the model was trained on: stored in the checkpoint since issue 30,
    else counted in its training split when that dataset is in the data directory unchanged."""
    if trained.atoms_per_cell:
        return trained.atoms_per_cell
    try:
        dataset = resolve_dataset(trained.recipe.data.dataset_name)  # as the recipe named it when training
        if dataset.content_hash != trained.dataset_hash:
            return None
        counts = dataset.load(trained.recipe.data.train_split).num_atoms
    except (UserError, OSError, ValueError, KeyError):
        return None  # without its training data the box alone is checked
    return int(counts.min()), int(counts.max())


def warn_outside_training(trained: TrainedModel, crystals: CrystalSet) -> list[str]:
    """Log one warning line when inputs have more or fewer atoms per cell than the model's training data, or
    atoms beyond the box its particles span: those decode to nonsense. Returns the offending ids."""
    margin = trained.recipe.estimator.particle_interval  # the particle grid reaches one interval past the box
    low, high = trained.box[0] - margin, trained.box[1] + margin
    atom_range = training_atom_range(trained)
    offending, example = [], ""
    for index, count in enumerate(crystals.num_atoms):
        coords = crystals.cart_coords[crystals.offsets[index] : crystals.offsets[index + 1]]
        beyond = bool(np.any(coords < low) or np.any(coords > high))
        unseen = atom_range is not None and not atom_range[0] <= count <= atom_range[1]
        if beyond or unseen:
            offending.append(crystals.ids[index])
            if not example:
                extent = np.round(coords.max(axis=0), 1).tolist() if len(coords) else []
                example = f"{crystals.ids[index]} has {int(count)} atoms reaching {extent} Å"
    if offending:
        atoms = f", {atom_range[0]}-{atom_range[1]} atoms per cell" if atom_range else ""
        log.warning(
            "%d of %d inputs lie outside the training data of %s (atoms within %s Å%s), e.g. %s; "
            "their decodes are unreliable",
            len(offending),
            len(crystals),
            trained.path,
            np.round(trained.box, 1).tolist(),
            atoms,
            example,
        )
    return offending


def evaluate(
    checkpoint: str | None,
    data: str | None,
    split: str = "test",
    field: str = "model",
    limit: int = 0,
    device: str = "cpu",
    estimator_overrides: dict[str, str] | None = None,
    progress: Progress | None = None,
    symmetrize: bool = False,
    symprec: float = STATED_SYMPREC,
) -> Evaluation:
    """Decode a split and score it with the paper's and the CDVAE-family metrics.

    Args:
        checkpoint: run folder, .pt file or shipped model name; None means the shipped default model
            (or, for ``field="exact"``, no model at all).
        data: dataset name or folder; None means the dataset the model was trained on (``builtin``
            for the exact field without a model).
        split: which split. limit: first N structures only (0 = all).
        field: ``model`` (the network) or ``exact`` (the analytic field of the true structures, which
            tests the estimator apart from training).
        estimator_overrides: ``{"estimator.steps": "32"}``-style overrides of the estimator settings.
        symmetrize: snap each decoded structure to the highest-symmetry space group spglib finds within
            ``symprec`` Å before scoring; the summary keeps the unsymmetrised paper's metrics beside.
    """
    if field not in ("model", "exact"):
        raise UserError(f"field must be model or exact, got {field!r}")
    if symmetrize:
        check_symprec(symprec)
    if checkpoint is None and field == "model":
        checkpoint = DEFAULT_MODEL
    trained = load_model(checkpoint, device) if checkpoint else None
    if data is None:
        data = trained.recipe.data.dataset_name if trained else "builtin"
    dataset = resolve_dataset(data)
    crystals = dataset.load(split)
    if limit > 0:
        crystals = crystals.subset(range(min(limit, len(crystals))))
    if len(crystals) == 0:
        raise UserError(f"split {split!r} of dataset {dataset.name!r} is empty")
    config = estimator_config(trained, estimator_overrides or {})
    truth = list(crystals)
    if field == "exact":
        species_table = trained.species_table if trained else dataset.species_table
        box = trained.box if trained else atoms_bounding_box(dataset.load(dataset.split_names[0]))
        exact = ExactField(truth, species_table)
        decoded = estimate(exact, exact.latents(), box, species_table, config, progress)
    else:
        z = encode(trained, crystals)
        decoded = estimate(trained.model, z, trained.box, trained.species_table, config, progress)
    decoded_crystals = [result.to_crystal(true.id) for true, result in zip(truth, decoded)]
    scored = list(decoded)
    symmetrized: dict[str, Any] = {"symmetrize": symmetrize}
    if symmetrize:
        before = pool_over_atoms([structure_metrics(true, result) for true, result in zip(truth, decoded)])
        decoded_crystals, failed = symmetrize_decoded(decoded_crystals, symprec)
        # a symmetrised structure is a valid crystal, so near-duplicate detections are gone from it
        scored = [_beside(crystal, result) if crystal else result for crystal, result in zip(decoded_crystals, decoded)]
        symmetrized |= {
            "symmetrize_symprec": symprec,
            "symmetrize_failed": failed,
            "before_symmetrize": before,
        }
    rates, true_reports, decoded_reports = recovery_rates(truth, decoded_crystals, TOLERANCES)
    rows = []
    for true, result, true_report, decoded_report in zip(truth, scored, true_reports, decoded_reports):
        rows.append(
            {
                "id": true.id,
                "formula": true.reduced_formula,
                **structure_metrics(true, result),
                "input_spacegroup": true_report.at(STATED_SYMPREC).number,
                "decoded_spacegroup": decoded_report.at(STATED_SYMPREC).number if decoded_report else None,
            }
        )
    summary = {
        "checkpoint": trained.path if trained else None,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "trained_on_this_dataset": bool(trained and trained.dataset_hash == dataset.content_hash),
        "split": split,
        "field": field,
        "estimator": {k: getattr(config, k) for k in config.__dataclass_fields__},
        **mean_over_structures(rows),
        "reference": pool_over_atoms(rows),
        **{f"cdvae_{k}": v for k, v in cdvae_metrics(truth, decoded_crystals).items() if k != "num_structures"},
        # at STATED_SYMPREC this is cdvae_spacegroup_match_pct; the ladder shows how it depends on the tolerance
        "symmetry_symprec": STATED_SYMPREC,
        **{recovery_key(tolerance): rate for tolerance, rate in rates.items()},
        **symmetrized,
    }
    return Evaluation(summary, rows, truth, decoded_crystals)


def _beside(snapped: Crystal, raw: Decoded) -> Decoded:
    """A symmetrised structure with each atom at its periodic image nearest the raw decode's atoms.

    The paper's metrics compare Cartesian positions without periodic images and the raw decode is not
    wrapped into the cell, so scoring the wrapped crystal would count atoms on a cell face (at 0.999
    instead of -0.001) as misplaced by a whole cell; this way the metrics measure the symmetrisation.
    """
    raw_frac = raw.cart_coords @ np.linalg.inv(lattice_matrix(raw.lengths, raw.angles))  # (M, 3)
    delta = raw_frac[None, :, :] - snapped.frac_coords[:, None, :]  # (N, M, 3)
    distance = np.linalg.norm((delta - np.round(delta)) @ snapped.lattice, axis=-1)  # (N, M)
    nearest = distance.argmin(axis=1)  # (N,)
    frac = snapped.frac_coords + np.round(delta[np.arange(snapped.num_atoms), nearest])  # (N, 3)
    species_index = dict(zip(raw.atomic_numbers.tolist(), raw.species.tolist()))
    return Decoded(
        lengths=snapped.lengths,
        angles=snapped.angles,
        cart_coords=frac @ snapped.lattice,
        species=np.array([species_index[int(z)] for z in snapped.atomic_numbers]),
        atomic_numbers=snapped.atomic_numbers,
    )


def recovery_key(symprec: float) -> str:
    """Summary key of the symmetry recovery rate (% decoded space group = input's) at one tolerance."""
    return f"symmetry_recovery_pct_{symprec:g}"


def estimator_config(trained: TrainedModel | None, overrides: dict[str, str]) -> EstimatorConfig:
    config = trained.recipe.estimator if trained else EstimatorConfig()
    stripped = {}
    for key, value in overrides.items():
        if not key.startswith("estimator."):
            raise UserError(f"unknown option {key}; only estimator.* overrides are taken here, e.g. estimator.steps=32")
        stripped[key.removeprefix("estimator.")] = value
    try:
        return apply_overrides(config, stripped)
    except UserError as error:
        raise UserError(f"{error} (as estimator.KEY)") from None


def paper_reference(dataset_name: str) -> tuple[float, ...] | None:
    """The paper's Table 1 column for a dataset name, if it is one of the paper's."""
    for key, values in PAPER_TABLE1.items():
        if dataset_name == key or dataset_name.startswith(key + "-"):
            return values
    return None


def summarise_runs(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    """Mean ± std over several runs (the paper's 10 seeds), of both aggregations, with each run's summary."""
    statistics = mean_std([e.summary for e in evaluations])
    reference = mean_std([e.summary["reference"] for e in evaluations])
    return {
        "runs": len(evaluations),
        "mean": {k: v[0] for k, v in statistics.items()} | {"reference": {k: v[0] for k, v in reference.items()}},
        "std": {k: v[1] for k, v in statistics.items()} | {"reference": {k: v[1] for k, v in reference.items()}},
        "each": [e.summary for e in evaluations],
    }


def expand_checkpoints(spec: str) -> list[str]:
    """``a,b`` lists and ``runs/seed*`` globs into checkpoint paths."""
    paths = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
        if not matches:
            raise UserError(f"checkpoint pattern {part!r} matched nothing")
        paths += matches
    return paths


def markdown_table(summary: dict[str, Any], std: dict[str, Any] | None = None) -> str:
    """A Table-1-style Markdown table: the pooled (reference) figures, the per-structure means, and the paper's column.

    ``summary`` is an evaluation summary (per-structure means at the top, pooled ones under
    ``reference``); ``std``, when given, has the same layout and is printed as ± beside each figure.
    """
    paper = paper_reference(summary["dataset"])
    header = "| metric | nesfgen, pooled over atoms (reference) | nesfgen, per-structure mean |"
    lines = [header + (" paper, Table 1 |" if paper else ""), "|---|---|---|" + ("---|" if paper else "")]
    for index, name in enumerate(PAPER_METRICS):
        pooled = _figure(summary["reference"][name], std["reference"][name] if std else None)
        per_structure = _figure(summary[name], std[name] if std else None)
        lines.append(
            f"| {METRIC_LABELS[name]} | {pooled} | {per_structure} |" + (f" {paper[index]} |" if paper else "")
        )
    return "\n".join(lines) + "\n"


def _figure(value: float, std: float | None = None) -> str:
    """4 decimals, ``inf`` as such (an empty decode in the pooled actual position), NaN as n/a."""
    text = "n/a" if math.isnan(value) else f"{value:.4f}"
    return text if std is None else f"{text} ± {_figure(std)}"


def write_report(evaluation: Evaluation, out: Path) -> list[Path]:
    """evaluation.json, evaluation.md, structures.csv and errors_vs_atoms.png (the paper's Fig. 4)."""
    output_folder(out, "report folder")
    s = evaluation.summary
    title = f"# Evaluation: {s['dataset']} / {s['split']} ({s['num_structures']} structures, {s['field']} field)\n\n"
    extra = (
        f"\nEmpty decodes: {s['empty_decodes']}. StructureMatcher match rate {s['cdvae_match_rate_pct']:.2f} %, "
        f"RMSE {s['cdvae_rmse']:.4f}; space group recovered {s['cdvae_spacegroup_match_pct']:.2f} %.\n"
        f"Checkpoint: {s['checkpoint']}\n"
    )
    files = {
        "evaluation.json": json.dumps(s, indent=1, default=str),
        "evaluation.md": f"{title}{markdown_table(s)}\n{AGGREGATION_NOTE}\n{extra}\n## Symmetry\n\n{symmetry_markdown(s)}",
        "structures.csv": _csv(evaluation.rows),
    }
    written = []
    for name, text in files.items():
        written.append(atomic_write_text(out / name, text))
    written.append(plot_errors_vs_atoms(evaluation.rows, out / "errors_vs_atoms.png"))
    return written


def symmetry_markdown(summary: dict[str, Any]) -> str:
    """The symmetry recovery rates and, when decodes were symmetrised, the paper's metrics before and after."""
    stated = summary["symmetry_symprec"]
    others = ", ".join(
        f"{t:g} Å {summary[recovery_key(t)]:.2f} %" for t in TOLERANCES if recovery_key(t) in summary and t != stated
    )
    text = (
        f"Symmetry recovery (decoded space group = input's, spglib): {summary[recovery_key(stated)]:.2f} % at "
        f"{stated:g} Å (the CDVAE space-group agreement); {others}.\n"
    )
    if not summary.get("symmetrize"):
        return text + "Decoded structures were scored as decoded (not symmetrised).\n"
    text += (
        f"\nSymmetrised: each decoded structure was snapped to the highest-symmetry space group spglib finds "
        f"within {summary['symmetrize_symprec']:g} Å before scoring ({summary['symmetrize_failed']} could not be "
        "and were scored as decoded).\n"
    )
    before = summary.get("before_symmetrize")
    if before:
        after = summary["reference"]
        text += "\n| metric (pooled over atoms) | as decoded | symmetrised |\n|---|---|---|\n" + "".join(
            f"| {METRIC_LABELS[name]} | {_figure(before[name])} | {_figure(after[name])} |\n" for name in PAPER_METRICS
        )
    return text


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_errors_vs_atoms(rows: list[dict[str, Any]], path: Path, min_samples: int = 10) -> Path:
    """Median and 68 % range of the signed atom-count, position and species errors per atom count."""
    series = {
        "detected − actual atoms": lambda r: r["num_detected"] - r["num_atoms"],
        "position error, actual [Å]": lambda r: r["position_error_actual"],
        "species error, actual [%]": lambda r: r["species_error_actual_pct"],
    }
    sizes = sorted({r["num_atoms"] for r in rows})
    figure, axes = new_figure(3, 14, 3.8)
    for axis, (label, value) in zip(axes, series.items()):
        xs, median, low, high = [], [], [], []
        for size in sizes:
            values = np.array([value(r) for r in rows if r["num_atoms"] == size], dtype=float)
            values = values[np.isfinite(values)]
            if len(values) < min_samples:
                continue
            xs.append(size)
            median.append(np.median(values))
            low.append(np.percentile(values, 16))
            high.append(np.percentile(values, 84))
        axis.plot(xs, median, "o-")
        axis.fill_between(xs, low, high, alpha=0.3)
        axis.set_xlabel("atoms per cell")
        axis.set_title(label)
    figure.suptitle(f"medians and 68 % ranges (atom counts with ≥ {min_samples} structures)")
    return save_figure(figure, path)


def write_reconstructions(evaluation: Evaluation, out: Path) -> int:
    """``<stem>.input.cif`` and ``<stem>.decoded.cif`` side by side; returns the number of pairs written.

    Stems come from the ids through :func:`safe_file_stems` (distinct even for ids ``a/b`` and ``a_b``);
    the ``file`` column of ``structures.csv`` gives each id's stem.
    """
    output_folder(out)
    stems = safe_file_stems([true.id or f"structure-{i}" for i, true in enumerate(evaluation.truth)])
    for stem, true, decoded in zip(stems, evaluation.truth, evaluation.decoded):
        atomic_write_text(out / f"{stem}.input.cif", true.to_cif())
        if decoded is not None:
            atomic_write_text(out / f"{stem}.decoded.cif", decoded.to_cif())
    atomic_write_text(
        out / "structures.csv", _csv([{**row, "file": stem} for row, stem in zip(evaluation.rows, stems)])
    )
    return len(evaluation.truth)


def evaluate_trajectory(
    run_dir: Path, data: str, split: str = "test", limit: int = 0, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """The paper's metrics (pooled over atoms, as the paper) of every snapshot of a run against its training time."""
    from nesfgen.checkpoint import read_checkpoint

    checkpoints = sorted((Path(run_dir) / "snapshots").glob("epoch-*.pt"))
    if not checkpoints:
        raise UserError(f"{run_dir} has no snapshots; train with train.snapshot_every_minutes=N to record them")
    rows = []
    for path in checkpoints:
        state = read_checkpoint(path)
        summary = evaluate(str(path), data, split, limit=limit, progress=progress).summary
        rows.append(
            {
                "epoch": state["epoch"],
                "training_minutes": state["seconds"] / 60,
                **summary["reference"],
            }
        )
    return rows


def write_trajectory(rows: list[dict[str, Any]], out: Path, dataset: str) -> list[Path]:
    """trajectory.csv, trajectory.md and trajectory.png (each pooled metric against training time, paper value dashed)."""
    output_folder(out, "trajectory folder")
    reference = paper_reference(dataset)
    figure, axes = new_figure(len(PAPER_METRICS), 4 * len(PAPER_METRICS), 3.4)
    minutes = [row["training_minutes"] for row in rows]
    for index, (axis, name) in enumerate(zip(axes, PAPER_METRICS)):
        axis.plot(minutes, [row[name] for row in rows], "o-", label="nesfgen")
        if reference:
            axis.axhline(reference[index], linestyle="--", color="gray", label="paper (3200 epochs, GPU)")
        axis.set_title(METRIC_LABELS[name], fontsize=9)
        axis.set_xlabel("training time [min]")
    axes[0].legend(fontsize=8)
    png = save_figure(figure, out / "trajectory.png")
    header = "| epoch | minutes | " + " | ".join(METRIC_LABELS[name] for name in PAPER_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(PAPER_METRICS) + 2)]
    for row in rows:
        lines.append(
            f"| {row['epoch']} | {row['training_minutes']:.1f} | "
            + " | ".join(f"{row[n]:.4f}" for n in PAPER_METRICS)
            + " |"
        )
    return [
        atomic_write_text(out / "trajectory.md", "\n".join(lines) + "\n"),
        atomic_write_text(out / "trajectory.csv", _csv(rows)),
        png,
    ]
