"""The ``nesfgen`` command line: a thin typer shell that parses, calls one library function, renders."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nesfgen.errors import UserError

app = typer.Typer(
    help="Neural structure fields: encode crystals into latent vectors and decode them back.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Import, inspect and export datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Measure speed against this machine's own matmul rate.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)
stdout = Console(soft_wrap=True)

OVERRIDES_HELP = "Recipe overrides as dotted key=value pairs, e.g. train.epochs=10 model.latent_size=128."
JSON_HELP = "Print one machine-readable JSON document on stdout."


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print a result as JSON (stdout) or through a rich renderer."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    else:
        render(result)


@app.command("recipes")
def recipes_command(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the shipped training recipes."""
    from nesfgen.config import load_recipe, recipe_names, recipe_path

    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        first = recipe_path(name).read_text().splitlines()
        description = next((line.lstrip("# ").strip() for line in first[1:] if line.startswith("#")), "")
        rows.append(
            {"name": name, "dataset": recipe.data.dataset_name, "epochs": recipe.train.epochs, "about": description}
        )

    def render(rows: list[dict]) -> None:
        table = Table(title="recipes (nesfgen train recipe=NAME)")
        for column in ("name", "dataset", "epochs", "about"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("name", "dataset", "epochs", "about")))
        stdout.print(table)

    emit(rows, as_json, render)


@data_app.command("import")
def data_import(
    src: Path = typer.Argument(..., help="Source: a paper dataset folder/prefix, a CIF folder, or a CDVAE CSV."),
    format: str = typer.Option(..., "--format", "-f", help="paper | cif | cdvae-csv"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Dataset folder to write."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Import the valid entries and report the rest."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Import structures into a dataset folder (atomic: it completes or leaves nothing behind).

    With --format paper and SRC the nesf-paper folder itself, every paper dataset is imported into the
    data directory under its name (lcs6, icsg3d, ybco-fold0 ... ybco-fold19).
    """
    from nesfgen.data import importers
    from nesfgen.data.store import data_dir

    if format == "paper":
        if out is None and src.is_dir() and not (src / "dataset.pkl").exists():
            reports = importers.import_paper_collection(src, data_dir(), skip_invalid=skip_invalid)
        else:
            reports = [importers.import_paper(src, _required_out(out), skip_invalid=skip_invalid)]
    elif format == "cif":
        reports = [importers.import_cif(src, _required_out(out), skip_invalid=skip_invalid)]
    elif format == "cdvae-csv":
        reports = [importers.import_cdvae_csv(src, _required_out(out), skip_invalid=skip_invalid)]
    else:
        raise UserError(f"unknown --format {format!r}; choose one of: paper, cif, cdvae-csv")
    result = [
        {
            "name": r.dataset.name,
            "path": str(r.dataset.path),
            "imported": dict(r.imported),
            "skipped": [{"entry": e, "reason": why} for e, why in r.skipped],
        }
        for r in reports
    ]

    def render(result: list[dict]) -> None:
        for entry in result:
            counts = ", ".join(f"{split} {n}" for split, n in entry["imported"].items())
            stdout.print(f"[green]imported[/] {entry['name']} -> {entry['path']} ({counts})")
            for skipped in entry["skipped"]:
                stdout.print(f"  [yellow]skipped[/] {skipped['entry']}: {skipped['reason']}")

    emit(result, as_json, render)


def _required_out(out: Path | None) -> Path:
    if out is None:
        raise UserError("--out DIR is required: the dataset folder to write")
    return out


@data_app.command("info")
def data_info(
    dataset: str = typer.Argument("builtin", help="Dataset name (builtin, lcs6, ...) or folder."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Counts per split, atoms per cell, species and cell sizes of a dataset."""
    from nesfgen.data.info import dataset_info
    from nesfgen.data.names import resolve_dataset

    info = dataset_info(resolve_dataset(dataset))

    def render(info: dict) -> None:
        stdout.print(
            f"[bold]{info['name']}[/] ({info['path']}), {info['species_count']} species, hash {info['content_hash'][:12]}"
        )
        sizes = sorted({int(k) for s in info["splits"].values() for k in s["atoms_per_cell"]})
        table = Table(title="structures by atoms per cell")
        table.add_column("atoms per cell", justify="right")
        for split in info["splits"]:
            table.add_column(split, justify="right")
        for size in sizes:
            table.add_row(str(size), *(str(s["atoms_per_cell"].get(str(size), "")) for s in info["splits"].values()))
        table.add_row("total", *(str(s["structures"]) for s in info["splits"].values()), style="bold")
        stdout.print(table)
        for split, s in info["splits"].items():
            stdout.print(
                f"{split}: a,b,c in {s['lengths_min']}..{s['lengths_max']} Å; angles {s['angles_min']}..{s['angles_max']}°"
            )
        stdout.print("species: " + " ".join(f"{el}({n})" for el, n in info["species"].items()))

    emit(info, as_json, render)


@data_app.command("export")
def data_export(
    dataset: str = typer.Argument(..., help="Dataset name or folder."),
    format: str = typer.Option("cif", "--format", "-f", help="Only cif for now."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write <split>/<id>.cif into."),
    split: list[str] | None = typer.Option(None, "--split", help="Only these splits (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a dataset's structures as CIF files."""
    from nesfgen.data.info import export_cif
    from nesfgen.data.names import resolve_dataset

    if format != "cif":
        raise UserError(f"unknown --format {format!r}; export supports: cif")
    written = export_cif(resolve_dataset(dataset), out, split)
    emit(
        {"written": written, "out": str(out)},
        as_json,
        lambda r: stdout.print(f"wrote {r['written']} CIF files to {r['out']}"),
    )


class RichTrainProgress:
    """Live progress bar with the running losses; one table row per epoch."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[losses]}"),
            console=console,
            transient=True,
        )
        self.task = None

    def start(self, recipe, run_dir, parameters, start_epoch, batches_per_epoch) -> None:
        console.print(f"[bold]{recipe.name}[/]: {parameters:,} parameters, run folder {run_dir}")
        self.batches = batches_per_epoch
        self.bar.start()
        self.task = self.bar.add_task("train", total=batches_per_epoch, epoch=start_epoch + 1, losses="")

    def step(self, epoch, batch, losses) -> None:
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        self.bar.update(self.task, completed=batch + 1, epoch=epoch + 1, losses=text)

    def epoch(self, row) -> None:
        console.print(
            f"epoch {row['epoch']:>4}  {row['epoch_seconds']:7.1f}s  train {row['train_total']:.4f}  "
            f"val {row['val_total']:.4f} (pos {row['val_position']:.4f} spe {row['val_species']:.3f} "
            f"len {row['val_length']:.4f} ang {row['val_angle']:.5f})",
            highlight=False,
        )
        self.bar.reset(self.task, total=self.batches)

    def stop(self) -> None:
        self.bar.stop()


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train an autoencoder: nesfgen train [recipe=NAME] [out=RUN_DIR] [resume=RUN_DIR] [key=value ...]."""
    from nesfgen.config import load_recipe, parse_overrides, to_toml
    from nesfgen.train import resume, train

    overrides, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(
            f"unexpected argument(s) {' '.join(positional)}; nesfgen train takes key=value pairs. {OVERRIDES_HELP}"
        )
    recipe_name = overrides.pop("recipe", "quickstart")
    out = overrides.pop("out", None)
    resume_dir = overrides.pop("resume", None)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    progress = None if as_json or not main_rank else RichTrainProgress()
    try:
        if resume_dir:
            result = resume(Path(resume_dir), overrides, progress)
        else:
            recipe = load_recipe(recipe_name, overrides)
            if not as_json and main_rank:
                console.print(to_toml(recipe, header="# resolved recipe"), highlight=False, markup=False)
            result = train(recipe, Path(out) if out else None, progress)
    finally:
        if progress:
            progress.stop()
    summary = {
        "run_dir": str(result.run_dir),
        "dataset": result.dataset,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stop_reason": result.stop_reason,
        "seconds": round(result.seconds, 1),
        "parameters": result.parameters,
        "last": result.last_row,
    }
    if not main_rank:
        return
    emit(
        summary,
        as_json,
        lambda s: stdout.print(
            f"[green]done[/] ({s['stop_reason']}): {s['epochs']} epochs in {s['seconds']} s, best validation loss "
            f"{s['best_val_loss']:.4f} at epoch {s['best_epoch']}; checkpoints in {s['run_dir']}\n"
            f"next: nesfgen evaluate checkpoint={s['run_dir']} data={s['dataset']} split=test"
        ),
    )


def _key_values(ctx: typer.Context, command: str, allowed: set[str]) -> dict[str, str]:
    """key=value arguments of a non-recipe command; estimator.* keys pass through."""
    from nesfgen.config import parse_overrides

    values, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(f"unexpected argument(s) {' '.join(positional)}; nesfgen {command} takes key=value pairs")
    for key in values:
        if key not in allowed and not key.startswith("estimator."):
            raise UserError(
                f"unknown option {key} for nesfgen {command}; valid: {', '.join(sorted(allowed))}, estimator.*"
            )
    return values


def _decode_progress(label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


EVALUATE_KEYS = {"checkpoint", "data", "split", "field", "limit", "device", "out"}


@app.command("evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Decode a split and score it: nesfgen evaluate checkpoint=RUN[,RUN|GLOB] data=NAME split=test [field=exact] [out=DIR]."""
    from nesfgen.config import parse_value
    from nesfgen.evaluate import evaluate, expand_checkpoints, markdown_table, summarise_runs, write_report

    options = _key_values(ctx, "evaluate", EVALUATE_KEYS)
    estimator = {k: v for k, v in options.items() if k.startswith("estimator.")}
    checkpoints = expand_checkpoints(options["checkpoint"]) if "checkpoint" in options else [None]
    limit = parse_value(options.get("limit", "0"), int, "limit")
    evaluations = []
    for checkpoint in checkpoints:
        bar, progress = _decode_progress(f"decoding ({checkpoint or 'exact field'})")
        with bar:
            evaluation = evaluate(
                checkpoint,
                options.get("data", "builtin"),
                options.get("split", "test"),
                options.get("field", "model"),
                limit,
                options.get("device", "cpu"),
                estimator,
                progress,
            )
        folder = _report_folder(options.get("out"), checkpoint, evaluation.summary, len(checkpoints) > 1)
        evaluation.summary["report_files"] = [str(p) for p in write_report(evaluation, folder)]
        evaluations.append(evaluation)
    result = evaluations[0].summary if len(evaluations) == 1 else summarise_runs(evaluations)

    def render(result: dict) -> None:
        if "runs" in result:
            stdout.print(f"mean ± std over {result['runs']} runs")
            stdout.print(
                markdown_table({**result["mean"], "dataset": result["each"][0]["dataset"]}, result["std"]), markup=False
            )
        else:
            stdout.print(markdown_table(result), markup=False)
            stdout.print(
                f"empty decodes {result['empty_decodes']}; StructureMatcher match {result['cdvae_match_rate_pct']:.1f} % "
                f"(RMSE {result['cdvae_rmse']:.4f}); space group recovered {result['cdvae_spacegroup_match_pct']:.1f} %"
            )
            stdout.print(f"reports: {', '.join(result['report_files'])}", markup=False)

    emit(result, as_json, render)


def _report_folder(out: str | None, checkpoint: str | None, summary: dict, several: bool) -> Path:
    """out= as given (one sub-folder per run when several), else beside the checkpoint."""
    name = f"eval-{summary['dataset']}-{summary['split']}" + ("-exact" if summary["field"] == "exact" else "")
    from nesfgen.checkpoint import PACKAGED_MODELS

    run = Path(summary["checkpoint"]).parent if checkpoint else None
    if out:
        return Path(out) / run.name if several else Path(out)
    if run is None or run == PACKAGED_MODELS:
        return Path("runs") / name
    return run / name


@app.command("trajectory", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def trajectory_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Accuracy against training time: nesfgen trajectory run=RUN data=NAME [split=test] [limit=N]."""
    from nesfgen.config import parse_value
    from nesfgen.evaluate import evaluate_trajectory, write_trajectory

    options = _key_values(ctx, "trajectory", {"run", "data", "split", "limit"})
    if "run" not in options:
        raise UserError("run=RUN_DIR is required: a run trained with train.snapshot_every_minutes")
    bar, progress = _decode_progress("decoding snapshots")
    with bar:
        rows = evaluate_trajectory(
            Path(options["run"]),
            options.get("data", "builtin"),
            options.get("split", "test"),
            parse_value(options.get("limit", "0"), int, "limit"),
            progress,
        )
    files = write_trajectory(rows, Path(options["run"]) / "trajectory", options.get("data", "builtin"))
    emit(
        {"rows": rows, "files": [str(f) for f in files]},
        as_json,
        lambda r: stdout.print((Path(options["run"]) / "trajectory" / "trajectory.md").read_text(), markup=False),
    )


RECONSTRUCT_KEYS = {"checkpoint", "data", "split", "field", "limit", "device", "out"}


@app.command("reconstruct", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reconstruct_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Write input and decoded CIFs side by side: nesfgen reconstruct checkpoint=RUN data=NAME split=test out=DIR."""
    from nesfgen.config import parse_value
    from nesfgen.evaluate import evaluate, write_reconstructions

    options = _key_values(ctx, "reconstruct", RECONSTRUCT_KEYS)
    if "out" not in options:
        raise UserError("out=FOLDER is required: where to write the CIF pairs")
    bar, progress = _decode_progress("decoding")
    with bar:
        evaluation = evaluate(
            options.get("checkpoint"),
            options.get("data", "builtin"),
            options.get("split", "test"),
            options.get("field", "model"),
            parse_value(options.get("limit", "0"), int, "limit"),
            options.get("device", "cpu"),
            {k: v for k, v in options.items() if k.startswith("estimator.")},
            progress,
        )
    written = write_reconstructions(evaluation, Path(options["out"]))
    emit(
        {"pairs": written, "out": options["out"]},
        as_json,
        lambda r: stdout.print(f"wrote {r['pairs']} input/decoded CIF pairs to {r['out']}"),
    )


@app.command("cv", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cv_command(
    ctx: typer.Context,
    folds: str = typer.Option("0-19", help="Folds to run, e.g. 0-19 or 0,3,5."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cross-validation: train and evaluate every fold (nesfgen cv recipe=paper-ybco [out=DIR] [key=value ...])."""
    from nesfgen.config import load_recipe, parse_overrides
    from nesfgen.crossval import cross_validate, parse_folds
    from nesfgen.evaluate import markdown_table
    from nesfgen.files import atomic_write_text

    overrides, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(f"unexpected argument(s) {' '.join(positional)}. {OVERRIDES_HELP}")
    out = overrides.pop("out", None)
    recipe = load_recipe(overrides.pop("recipe", "paper-ybco"), overrides)
    out = Path(out or f"runs/cv-{recipe.name}")
    progress = None if as_json else RichTrainProgress()
    try:
        result = cross_validate(recipe, parse_folds(folds), out, progress)
    finally:
        if progress:
            progress.stop()
    dataset = recipe.data.name
    table = markdown_table({**result["pooled"], "dataset": dataset})
    atomic_write_text(out / "cv.md", f"# {recipe.name}: folds {folds}, pooled test structures\n\n{table}")
    atomic_write_text(out / "cv.json", json.dumps(result, indent=1, default=str))

    def render(r: dict) -> None:
        stdout.print(f"{len(r['folds'])} folds, {r['pooled']['num_structures']} pooled test structures:")
        stdout.print(table, markup=False)
        stdout.print(f"written: {out / 'cv.md'}, {out / 'cv.json'}", markup=False)

    emit(result, as_json, render)


@bench_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_train_command(
    ctx: typer.Context,
    steps: int = typer.Option(6, help="Timed training steps (after 2 warm-up steps)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Training throughput: nesfgen bench train [recipe=NAME] [key=value ...]."""
    from nesfgen.bench import bench_train
    from nesfgen.config import load_recipe, parse_overrides

    overrides, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(f"unexpected argument(s) {' '.join(positional)}. {OVERRIDES_HELP}")
    recipe = load_recipe(overrides.pop("recipe", "quickstart"), overrides)
    with console.status("timing training steps"):
        result = bench_train(recipe, steps=steps)

    def render(r: dict) -> None:
        shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["step_share"].items())
        stdout.print(
            f"{r['recipe']} on {r['device']} ({r['precision']}, batch {r['batch_size']}): "
            f"{r['queries_per_second']:,.0f} queries/s, {r['structures_per_second']:.1f} structures/s, "
            f"{r['seconds_per_step']:.3f} s/step ({shares}); ~{r['epoch_seconds_estimate']:.0f} s per epoch\n"
            f"matmul FLOP rate {r['achieved_gflops']:.1f} GFLOP/s = {r['fraction_of_matmul']:.2f} × this machine's dense "
            f"{r['precision']} matmul ({r['matmul_gflops']:.1f} GFLOP/s, measured now)"
        )

    emit(result, as_json, render)


@bench_app.command("estimate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_estimate_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Decoding throughput: nesfgen bench estimate checkpoint=RUN [data=NAME] [split=test] [limit=32] [single=4]."""
    from nesfgen.bench import bench_estimate
    from nesfgen.checkpoint import load_model
    from nesfgen.config import parse_value
    from nesfgen.data.names import resolve_dataset
    from nesfgen.evaluate import encode

    options = _key_values(ctx, "bench estimate", {"checkpoint", "data", "split", "limit", "single", "device"})
    if "checkpoint" not in options:
        raise UserError("checkpoint= is required: the model whose decoding to time")
    trained = load_model(options["checkpoint"], options.get("device", "cpu"))
    crystals = resolve_dataset(options.get("data", "builtin")).load(options.get("split", "test"))
    limit = parse_value(options.get("limit", "32"), int, "limit")
    crystals = crystals.subset(range(min(limit, len(crystals))))
    z = encode(trained, crystals)
    with console.status(f"decoding {len(crystals)} structures"):
        result = bench_estimate(
            trained.model,
            z,
            trained.box,
            trained.species_table,
            trained.recipe,
            parse_value(options.get("single", "4"), int, "single"),
        )

    def render(r: dict) -> None:
        stdout.print(
            f"{r['structures']} structures on {r['device']}: {r['structures_per_second']:.2f} structures/s batched, "
            f"{r['structures_per_second_one_at_a_time']:.2f} one at a time (batching ×{r['batching_speedup']:.2f}); "
            f"{r['field_evaluations_per_second']:,.0f} field evaluations/s; {r['achieved_gflops']:.1f} GFLOP/s = "
            f"{r['fraction_of_matmul']:.2f} × dense fp32 matmul ({r['matmul_gflops']:.1f} GFLOP/s, measured now)"
        )

    emit(result, as_json, render)


def main() -> None:
    """Entry point: user mistakes exit 2 with a message, internal errors exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except UserError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # a click usage error is a user mistake too
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(2)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(130)
        console.print_exception()
        console.print("[red]internal error[/]: this is a bug in nesfgen; please report it with the trace above")
        sys.exit(1)


if __name__ == "__main__":
    main()
