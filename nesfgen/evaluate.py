"""Reconstruction evaluation: encode a split, decode it with the estimator, score it as the paper does."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.checkpoint import DEFAULT_MODEL, PACKAGED_MODELS, ensemble_members, load_model, resolve_checkpoint
from nesfgen.crystal import Crystal, lattice_matrix
from nesfgen.data.names import resolve_dataset
from nesfgen.decoder import Decoder, estimator_config
from nesfgen.errors import UserError
from nesfgen.estimator import Decoded, ExactField
from nesfgen.files import atomic_write_text, new_figure, output_folder, safe_file_stems, save_figure
from nesfgen.latent_fit import fit_latents
from nesfgen.metrics import (
    PAPER_METRICS,
    cdvae_metrics,
    mean_over_structures,
    mean_std,
    pool_over_atoms,
    structure_metrics,
)
from nesfgen.options import DecodeOptions, comma_list, required
from nesfgen.progress import Progress
from nesfgen.sampling import atoms_bounding_box
from nesfgen.symmetry import STATED_SYMPREC, TOLERANCES, recovery_rates

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


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(DecodeOptions):
    """What to decode and score.

    ``checkpoint``: run folder, .pt file or shipped model name, or several joined by + (an ensemble decoded as
    one field, :mod:`nesfgen.ensemble`); for ``evaluate_runs`` also a comma list or glob of several; None means
    the shipped default model (or, for ``field="exact"``, no model at all).
    ``data``: dataset name or folder; None means the dataset the model was trained on (``builtin`` for
    the exact field without a model). ``limit``: first N structures only (0 = all). ``field``: ``model``
    (the network) or ``exact`` (the analytic field of the true structures, which tests the estimator apart
    from training). ``symmetrize``: snap each decoded structure to the highest-symmetry space group spglib
    finds within ``symprec`` Å before scoring; the summary keeps the unsymmetrised paper's metrics beside.
    ``out``: the report folder (evaluate) or the CIF folder (reconstruct). ``fit_steps``: fit each structure's
    latent to its own field targets by that many Adam steps at ``fit_lr`` before decoding
    (:func:`nesfgen.latent_fit.fit_latents`); 0 decodes the encoder's latents, as the paper does.
    """

    data: str | None = None
    split: str = "test"
    field: str = "model"
    limit: int = 0
    out: str | None = None
    fit_steps: int = 0
    fit_lr: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.field not in ("model", "exact"):
            raise UserError(f"field must be model or exact, got {self.field!r}")
        if self.limit < 0:
            raise UserError(f"limit must be 0 (every structure) or a number of structures, got {self.limit}")
        if not 0 <= self.fit_steps <= 100_000:
            raise UserError(f"fit_steps must be 0 (the encoder's latents) to 100000 Adam steps, got {self.fit_steps}")
        if not self.fit_lr > 0:
            raise UserError(f"fit_lr must be a learning rate above 0, got {self.fit_lr}")
        if self.fit_steps and self.field == "exact":
            raise UserError("fit_steps= fits a model's latents; field=exact has none to fit")


def evaluate(options: EvaluateOptions, progress: Progress | None = None) -> Evaluation:
    """Decode a split and score it with the paper's and the CDVAE-family metrics."""
    checkpoint = options.checkpoint
    if checkpoint is None and options.field == "model":
        checkpoint = DEFAULT_MODEL
    trained = load_model(checkpoint, options.device) if checkpoint else None
    data = options.data or (trained.recipe.data.dataset_name if trained else "builtin")
    dataset = resolve_dataset(data)
    split = options.split
    crystals = dataset.load(split)
    if options.limit > 0:
        crystals = crystals.subset(range(min(options.limit, len(crystals))))
    if len(crystals) == 0:
        raise UserError(f"split {split!r} of dataset {dataset.name!r} is empty")
    truth = list(crystals)
    if options.field == "exact":
        species_table = trained.species_table if trained else dataset.species_table
        box = trained.box if trained else atoms_bounding_box(dataset.load(dataset.split_names[0]))
        exact = ExactField(truth, species_table)
        config = estimator_config(trained, options.estimator)
        decoder = Decoder(exact, box, species_table, config, options.symmetrize, options.tolerance, trained)
        z = exact.latents()
    else:
        decoder = Decoder.of(trained, options)
        z = decoder.encode(crystals)
        if options.fit_steps:
            # the same bar counts the fit's steps, then the decoded structures
            z = fit_latents(trained, crystals, z, options.fit_steps, options.fit_lr, progress=progress)
    decoding = decoder.decode(z, [true.id for true in truth], progress)
    decoded, decoded_crystals = decoding.raw, decoding.crystals
    scored = list(decoded)
    symmetrized: dict[str, Any] = {"symmetrize": options.symmetrize}
    if options.symmetrize:
        before = pool_over_atoms([structure_metrics(true, result) for true, result in zip(truth, decoded)])
        # a symmetrised structure is a valid crystal, so near-duplicate detections are gone from it
        scored = [_beside(crystal, result) if crystal else result for crystal, result in zip(decoded_crystals, decoded)]
        symmetrized |= {
            "symmetrize_symprec": decoder.symprec,
            "symmetrize_failed": decoding.symmetrize_failed,
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
        "field": options.field,
        "fit_steps": options.fit_steps,
        "fit_lr": options.fit_lr if options.fit_steps else None,
        "estimator": decoder.settings,
        **mean_over_structures(rows),
        "reference": pool_over_atoms(rows),
        **{f"cdvae_{k}": v for k, v in cdvae_metrics(truth, decoded_crystals).items() if k != "num_structures"},
        # at STATED_SYMPREC this is cdvae_spacegroup_match_pct; the ladder shows how it depends on the tolerance
        "symmetry_symprec": STATED_SYMPREC,
        **{recovery_key(tolerance): rate for tolerance, rate in rates.items()},
        **symmetrized,
    }
    return Evaluation(summary, rows, truth, decoded_crystals)


def evaluate_runs(options: EvaluateOptions, progress: Callable[[str], Progress] | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint, or several (a comma list or glob: mean ± std), writing each one's report.

    Reports go to ``options.out`` (one sub-folder per run when several), else beside each checkpoint.
    ``progress(label)`` gives the progress callback of each run's decoding.
    """
    checkpoints = expand_checkpoints(options.checkpoint) if options.checkpoint else [None]  # None: the default
    # every one found before any is decoded; an ensemble by its members' files
    files = [[resolve_checkpoint(m) for m in ensemble_members(c)] if c else None for c in checkpoints]
    if options.out:  # before decoding, not after
        output_folder(Path(options.out), "report folder", create=False)
    evaluations = []
    for checkpoint, sub_folder in zip(checkpoints, _run_labels(files)):
        label = (
            f"{'fitting latents, then decoding' if options.fit_steps else 'decoding'} ({checkpoint or 'exact field'})"
        )
        evaluation = evaluate(replace(options, checkpoint=checkpoint), progress(label) if progress else None)
        folder = _report_folder(
            options.out, checkpoint, evaluation.summary, sub_folder if len(checkpoints) > 1 else None
        )
        evaluation.summary["report_files"] = [str(p) for p in write_report(evaluation, folder)]
        evaluations.append(evaluation)
    return evaluations[0].summary if len(evaluations) == 1 else summarise_runs([e.summary for e in evaluations])


def _run_labels(files: list[list[Path] | None]) -> list[str]:
    """Each checkpoint's sub-folder of out= when several are evaluated: its run folder's name (an ensemble's
    joined by +), and the files' stems too where two share runs (best.pt and last.pt), so no report overwrites
    another."""
    runs = ["+".join(f.parent.name for f in members) if members else "exact" for members in files]
    return [
        f"{run}-{'+'.join(f.stem for f in members)}" if members and runs.count(run) > 1 else run
        for run, members in zip(runs, files)
    ]


def _report_folder(out: str | None, checkpoint: str | None, summary: dict, sub_folder: str | None) -> Path:
    """out= as given (``sub_folder`` of it when several runs are evaluated), else beside the checkpoint."""
    name = f"eval-{summary['dataset']}-{summary['split']}" + ("-exact" if summary["field"] == "exact" else "")
    name += fitted_suffix(summary.get("fit_steps", 0))
    members = ensemble_members(summary["checkpoint"]) if checkpoint else []
    if len(members) > 1:  # beside the first member, named by the others, so A+B and A+C keep their own reports
        name += "-ensemble-with-" + ",".join(_run_name(member) for member in members[1:])
    run = Path(members[0]).parent if checkpoint else None
    if out:
        return Path(out) / sub_folder if sub_folder else Path(out)
    if run is None or run == PACKAGED_MODELS:
        return Path("runs") / name
    return run / name


def _run_name(checkpoint: str) -> str:
    """A checkpoint's run folder name (``runs/seed-1/best.pt`` -> ``seed-1``), else its file's stem."""
    path = Path(checkpoint)
    return path.parent.name if path.name in ("best.pt", "last.pt") else path.stem


def reconstruct(options: EvaluateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Decode a split and write each input and decoded CIF side by side into ``options.out``."""
    if options.out is None:
        raise UserError("out=FOLDER is required: where to write the CIF pairs")
    output_folder(Path(options.out), "reconstruction folder", create=False)  # before decoding, not after
    evaluation = evaluate(options, progress)
    summary = evaluation.summary
    stated = summary["symmetry_symprec"]
    return {
        "pairs": write_reconstructions(evaluation, Path(options.out)),
        "out": options.out,
        "symmetrize": summary["symmetrize"],
        "symmetrize_symprec": summary.get("symmetrize_symprec"),
        "symmetrize_failed": summary.get("symmetrize_failed"),
        "symmetry_symprec": stated,
        "symmetry_recovery_pct": summary[recovery_key(stated)],
    }


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


def paper_reference(dataset_name: str) -> tuple[float, ...] | None:
    """The paper's Table 1 column for a dataset name, if it is one of the paper's."""
    for key, values in PAPER_TABLE1.items():
        if dataset_name == key or dataset_name.startswith(key + "-"):
            return values
    return None


def summarise_runs(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over several runs' summaries (the paper's 10 seeds), of both aggregations, with each summary.

    One run has no spread: its ``std`` is None, so no table prints a "± 0" that was never measured.
    """
    statistics = mean_std(summaries)
    reference = mean_std([summary["reference"] for summary in summaries])
    spread = {k: v[1] for k, v in statistics.items()} | {"reference": {k: v[1] for k, v in reference.items()}}
    return {
        "runs": len(summaries),
        "mean": {k: v[0] for k, v in statistics.items()} | {"reference": {k: v[0] for k, v in reference.items()}},
        "std": spread if len(summaries) > 1 else None,
        "each": list(summaries),
    }


def expand_checkpoints(spec: str) -> list[str]:
    """``a,b`` lists and ``runs/seed*`` globs into checkpoint paths."""
    paths = []
    for part in comma_list(spec):
        matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
        if not matches:
            raise UserError(f"checkpoint pattern {part!r} matched nothing")
        paths += matches
    if not paths:
        raise UserError(f"checkpoint={spec}: names no checkpoint; give a run folder, a .pt file or a shipped model")
    return paths


def markdown_table(summary: dict[str, Any], std: dict[str, Any] | None = None) -> str:
    """A Table-1-style Markdown table: the pooled (reference) figures, the per-structure means, and the paper's column.

    ``summary`` is an evaluation summary (per-structure means at the top, pooled ones under
    ``reference``); ``std``, when given, has the same layout and is printed as ± beside each figure.
    The paper's column stands only beside test figures (a summary without ``split`` is taken as one): the
    paper reports its test splits, and validation figures beside them would invite the wrong comparison.
    """
    paper = paper_reference(summary["dataset"]) if summary.get("split", "test") == "test" else None
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
        "evaluation.md": (
            f"{title}{latents_note(s)}{markdown_table(s)}\n{AGGREGATION_NOTE}\n{extra}\n## Symmetry\n\n{symmetry_markdown(s)}"
        ),
        "structures.csv": _csv(evaluation.rows),
    }
    written = []
    for name, text in files.items():
        written.append(atomic_write_text(out / name, text))
    written.append(plot_errors_vs_atoms(evaluation.rows, out / "errors_vs_atoms.png"))
    return written


def fitted_suffix(fit_steps: int) -> str:
    """What a report folder's name ends with when its latents were fitted, so it sits beside the one-pass report."""
    return f"-fit{fit_steps}" if fit_steps else ""


def latents_note(summary: dict[str, Any]) -> str:
    """A line saying the latents were fitted to their structures (not the paper's one-pass encoding), else nothing."""
    if not summary.get("fit_steps"):
        return ""
    return (
        f"Latents fitted to each structure's own field targets ({summary['fit_steps']} Adam steps at lr "
        f"{summary['fit_lr']:g}, nesfgen.latent_fit) before decoding: the paper encodes in one pass, so compare "
        "with its column with care.\n\n"
    )


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
    kept = {f"{stem}.input.cif" for stem in stems}
    kept |= {f"{stem}.decoded.cif" for stem, decoded in zip(stems, evaluation.decoded) if decoded is not None}
    for stale in [*out.glob("*.input.cif"), *out.glob("*.decoded.cif")]:  # an earlier run's, not in structures.csv
        if stale.name not in kept:
            stale.unlink()
    for stem, true, decoded in zip(stems, evaluation.truth, evaluation.decoded):
        atomic_write_text(out / f"{stem}.input.cif", true.to_cif())
        if decoded is not None:
            atomic_write_text(out / f"{stem}.decoded.cif", decoded.to_cif())
    atomic_write_text(
        out / "structures.csv", _csv([{**row, "file": stem} for row, stem in zip(evaluation.rows, stems)])
    )
    return len(evaluation.truth)


@dataclass(frozen=True, kw_only=True)
class TrajectoryOptions:
    """Which run's snapshots to decode, on which split."""

    run: str = required("run=RUN_DIR is required: a run trained with train.snapshot_every_minutes")
    data: str = "builtin"
    split: str = "test"
    limit: int = 0


def evaluate_trajectory(options: TrajectoryOptions, progress: Progress | None = None) -> dict[str, Any]:
    """The paper's metrics (pooled over atoms, as the paper) of every snapshot of a run against its training time.

    Writes trajectory.csv, .md and .png into RUN/trajectory; returns the rows, the files and the table.
    """
    from nesfgen.checkpoint import read_checkpoint

    if not Path(options.run).is_dir():
        raise UserError(f"run={options.run}: no such run folder")
    checkpoints = sorted((Path(options.run) / "snapshots").glob("epoch-*.pt"))
    if not checkpoints:
        raise UserError(f"{options.run} has no snapshots; train with train.snapshot_every_minutes=N to record them")
    rows = []
    for path in checkpoints:
        state = read_checkpoint(path)
        chosen = EvaluateOptions(checkpoint=str(path), data=options.data, split=options.split, limit=options.limit)
        summary = evaluate(chosen, progress).summary
        rows.append(
            {
                "epoch": state["epoch"],
                "training_minutes": state["seconds"] / 60,
                **summary["reference"],
            }
        )
    files = write_trajectory(rows, Path(options.run) / "trajectory", options.data)
    return {"rows": rows, "files": [str(f) for f in files], "table": files[0].read_text()}


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
