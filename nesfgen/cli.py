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
from rich.markup import escape
from rich.table import Table

from nesfgen.allocator import keep_freed_memory
from nesfgen.errors import UserError
from nesfgen.files import OS_ERROR_REASONS, os_error_reason

app = typer.Typer(
    help="Neural structure fields: encode crystals into latent vectors and decode them back.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # docstrings show key=value syntax in [brackets], which rich would eat as markup
)
data_app = typer.Typer(help="Import, inspect and export datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Measure speed against this machine's own matmul rate.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
prior_app = typer.Typer(help="Learned priors over an autoencoder's latents.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")

#: width of tables written to a file or pipe: rich's 80-column default would cut their columns to "…"
PIPED_WIDTH = 240


def _stdout_console() -> Console:
    """Results on stdout: a terminal's own width, or PIPED_WIDTH when redirected (unless COLUMNS says)."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console(soft_wrap=True)
    return Console(soft_wrap=True, width=PIPED_WIDTH)


console = Console(stderr=True)
stdout = _stdout_console()

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
            "unchanged": r.unchanged,
            "skipped": [{"entry": e, "reason": why} for e, why in r.skipped],
        }
        for r in reports
    ]

    def render(result: list[dict]) -> None:
        for entry in result:
            counts = ", ".join(f"{split} {n}" for split, n in entry["imported"].items())
            done = "[green]kept[/] (already imported, identical)" if entry["unchanged"] else "[green]imported[/]"
            stdout.print(f"{done} {entry['name']} -> {entry['path']} ({counts})", markup=False)
            for skipped in entry["skipped"]:
                stdout.print(f"  [yellow]skipped[/] {escape(str(skipped['entry']))}: {escape(str(skipped['reason']))}")

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
    """Counts per split, atoms per cell, species, cell sizes and training space groups of a dataset."""
    from nesfgen.data.info import dataset_info
    from nesfgen.data.names import resolve_dataset

    info = dataset_info(resolve_dataset(dataset))

    def render(info: dict) -> None:
        stdout.print(
            f"[bold]{escape(info['name'])}[/] ({escape(str(info['path']))}), {info['species_count']} species, "
            f"hash {info['content_hash'][:12]}"
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
        groups = info["space_groups"]
        table = Table(title=f"space groups of the {groups['split']} split (spglib, symprec {groups['symprec']:g} Å)")
        for column in ("number", "symbol", "structures", "share"):
            table.add_column(column, justify="right" if column != "symbol" else "left")
        for group in groups["groups"]:
            share = f"{100 * group['count'] / groups['structures']:.1f} %"
            table.add_row(str(group["number"]), group["symbol"], str(group["count"]), share)
        if groups["unassigned"]:
            table.add_row("", "none found", str(groups["unassigned"]), "")
        stdout.print(table)

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
        lambda r: stdout.print(f"wrote {r['written']} CIF files to {r['out']}", markup=False),
    )


@data_app.command("hull", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_hull(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Dataset name or folder."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build the local CHGNet convex hull of a dataset, cached beside it: nesfgen data hull NAME [split=train] [relax=false] [limit=0] [elements=Na,Cl,...]."""
    from nesfgen.config import parse_overrides, parse_value
    from nesfgen.stability import build_local_hull

    options, extra = parse_overrides(list(ctx.args))
    unknown = set(options) - {"split", "relax", "limit", "elements"}
    if unknown or extra:
        raise UserError(
            f"unexpected {sorted(unknown)[0] if unknown else extra[0]}; nesfgen data hull NAME takes split=, relax=, limit="
        )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        cache = build_local_hull(
            name,
            options.get("split", "train"),
            parse_value(options.get("relax", "false"), bool, "relax"),
            parse_value(options.get("limit", "0"), int, "limit"),
            progress,
            [e.strip() for e in options.get("elements", "").split(",") if e.strip()],
        )
    result = {k: v for k, v in cache.items() if k not in ("entries",)}
    emit(
        result,
        as_json,
        lambda r: stdout.print(
            f"hull of {r['dataset']} ({r['split']}, {r['structures']} structures, "
            f"{'relaxed' if r['relaxed'] else 'single point'}) and {len(r['elements'])} elemental references "
            f"with {r['potential']} in {r['seconds']:.0f} s",
            markup=False,
        ),
    )


@data_app.command("fetch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_fetch(
    ctx: typer.Context,
    selection: str = typer.Argument(..., help="lcs6 | icsg3d | ybco-like | query"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Dataset folder (default: mp-NAME in the data dir)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build a dataset from the Materials Project (needs MP_API_KEY): nesfgen data fetch lcs6 key=value ...

    Keys: seed=, split=TRAIN,VAL,TEST, folds=K, limit=N, page_size=, cache=DIR, gnome=true; lcs6 and query take
    max_length=Å; ybco-like takes candidates=CSV; query takes elements=, exclude_elements=, chemsys=, formula=,
    num_sites=MIN:MAX, num_elements=, spacegroup=, crystal_system=, energy_above_hull=, formation_energy=,
    band_gap=, volume=, density=, stable=, is_metal=, theoretical=. Pages are cached: run it again to resume.
    """
    from nesfgen.data import materials_project as mp

    plan = mp.plan_fetch(selection, _key_values(ctx, f"data fetch {selection}", mp.selection_keys(selection)))
    out = out or mp.default_out(selection)
    client = mp.MPResterClient(mp.api_key())
    bar, progress = _decode_progress("fetching documents")
    on_interrupt(lambda: "downloaded pages are cached; run the same command again to continue")
    with bar:
        report = mp.fetch_dataset(plan, out, client, progress=progress)
    result = {
        "selection": plan.selection.description,
        "documents": report.documents,
        "pages_downloaded": report.pages_downloaded,
        "pages_cached": report.pages_cached,
        "kept": report.kept,
        "filtered": report.filtered,
        "skipped": [{"id": i, "reason": why} for i, why in report.skipped],
        "datasets": [
            {
                "name": d.name,
                "path": str(d.path),
                "counts": {s: d.manifest["splits"][s]["count"] for s in d.split_names},
            }
            for d in report.datasets
        ],
        "cache": str(report.cache),
        "notes": report.notes,
    }

    def render(result: dict) -> None:
        stdout.print(
            f"{result['selection']}: {result['documents']} documents ({result['pages_downloaded']} pages downloaded, "
            f"{result['pages_cached']} from the cache), {result['kept']} kept",
            markup=False,
        )
        for reason, count in result["filtered"].items():
            stdout.print(f"  left out {count}: {reason}", markup=False)
        for skipped in result["skipped"][:10]:
            stdout.print(f"  [yellow]skipped[/] {escape(str(skipped['id']))}: {escape(str(skipped['reason']))}")
        for note in result["notes"]:
            stdout.print(f"  note: {note}", markup=False)
        for dataset in result["datasets"][:3]:
            counts = ", ".join(f"{split} {n}" for split, n in dataset["counts"].items())
            stdout.print(f"[green]wrote[/] {escape(str(dataset['name']))} -> {escape(str(dataset['path']))} ({counts})")
        if len(result["datasets"]) > 3:
            stdout.print(f"... and {len(result['datasets']) - 3} more folds")
        stdout.print(f"cached pages: {result['cache']} (delete to free space)", markup=False)

    emit(result, as_json, render)


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
        console.print(f"[bold]{escape(recipe.name)}[/]: {parameters:,} parameters, run folder {escape(str(run_dir))}")
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
            f"len {row['val_length']:.4f} ang {row['val_angle']:.5f}"
            + (f" kl {row['val_kl']:.2f})" if "val_kl" in row else ")"),
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
    """Train an autoencoder: nesfgen train [recipe=NAME] [out=RUN_DIR] [resume=RUN_DIR] [report=false] [key=value ...].

    At the end the kept model decodes the validation split (its first 128 structures): the figures are
    printed and RUN_DIR/report.json and RUN_DIR/reconstruction.png written; report=false skips this.
    """
    from nesfgen.config import load_recipe, parse_overrides, parse_value, to_toml
    from nesfgen.refit import describe_refit
    from nesfgen.report import report_run
    from nesfgen.train import new_run_dir, resume, train

    overrides, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(
            f"unexpected argument(s) {' '.join(positional)}; nesfgen train takes key=value pairs. {OVERRIDES_HELP}"
        )
    recipe_name = overrides.pop("recipe", "quickstart")
    out = overrides.pop("out", None)
    resume_dir = overrides.pop("resume", None)
    with_report = parse_value(overrides.pop("report", "true"), bool, "report")
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    progress = None if as_json or not main_rank else RichTrainProgress()
    try:
        if resume_dir:
            on_interrupt(lambda: _resume_training_hint(Path(resume_dir)))
            result = resume(Path(resume_dir), overrides, progress)
        else:
            recipe = load_recipe(recipe_name, overrides)
            if not as_json and main_rank:
                console.print(to_toml(recipe, header="# resolved recipe"), highlight=False, markup=False)
            run_dir = Path(out) if out else new_run_dir(recipe.name)
            on_interrupt(lambda: _resume_training_hint(run_dir))
            result = train(recipe, run_dir, progress)
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
        "lattice_refit": result.lattice_refit,
    }
    if not main_rank:
        return
    if with_report and (result.run_dir / "best.pt").is_file():
        bar, decode_progress = _decode_progress("decoding the validation split for the report")
        with bar:
            summary["report"] = report_run(result.run_dir, progress=decode_progress).as_dict()

    def render(s: dict) -> None:
        stdout.print(
            f"[green]done[/] ({s['stop_reason']}): {s['epochs']} epochs in {s['seconds']} s, best validation loss "
            f"{s['best_val_loss']:.4f} at epoch {s['best_epoch']}; checkpoints in {s['run_dir']}"
        )
        if s["lattice_refit"]:
            stdout.print(describe_refit(s["lattice_refit"]), markup=False)
        if "report" in s:
            _render_training_report(s["report"])
        stdout.print(f"next: nesfgen evaluate checkpoint={s['run_dir']} data={s['dataset']} split=test", markup=False)

    emit(summary, as_json, render)


def _render_training_report(report: dict) -> None:
    """The validation split's reconstruction figures and where the picture is."""
    from nesfgen.evaluate import markdown_table

    stdout.print(
        f"\nreconstruction of the validation split ({report['num_structures']} structures, split "
        f"{report['split']!r}), decoded with the kept model:",
        markup=False,
    )
    stdout.print(markdown_table(report), markup=False)
    stdout.print(
        f"StructureMatcher match {report['cdvae_match_rate_pct']:.1f} % (RMSE {report['cdvae_rmse']:.4f}); "
        f"space group recovered {report['cdvae_spacegroup_match_pct']:.1f} %; empty decodes {report['empty_decodes']}",
        markup=False,
    )
    stdout.print(f"inputs (top) and their decoded cells (below): {report['picture']}", markup=False)


def _resume_training_hint(run_dir: Path) -> str:
    if (run_dir / "last.pt").is_file():
        return f"the last finished epoch is saved; continue with: nesfgen train resume={run_dir}"
    return f"no epoch had finished, so {run_dir} holds nothing to resume; run the command again"


@app.command("refit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def refit_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Refit a trained run's lattice heads on eval-mode latents: nesfgen refit run=RUN [epochs=300] [lr=3e-4].

    Rewrites RUN/best.pt and keeps the checkpoint as trained in RUN/best.before-refit.pt.
    """
    from nesfgen.config import TrainConfig, parse_value
    from nesfgen.refit import describe_refit
    from nesfgen.train import refit_best

    options = _key_values(ctx, "refit", {"run", "epochs", "lr"})
    if "run" not in options or any(key.startswith("estimator.") for key in options):
        raise UserError("nesfgen refit run=RUN_DIR [epochs=300] [lr=3e-4]")
    epochs = parse_value(options.get("epochs", "300"), int, "epochs")
    lr = parse_value(options.get("lr", str(TrainConfig.lattice_refit_lr)), float, "lr")
    with console.status("refitting the lattice heads"):
        result = refit_best(Path(options["run"]), epochs, lr).as_dict()
    emit({"run": options["run"], **result}, as_json, lambda r: stdout.print(describe_refit(r), markup=False))


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


def _symmetrize_options(options: dict[str, str]) -> dict[str, Any]:
    """symmetrize=true|false and symprec=Å as keyword arguments (symprec only means something with symmetrize)."""
    from nesfgen.config import parse_value
    from nesfgen.symmetry import STATED_SYMPREC, check_symprec

    symmetrize = parse_value(options.get("symmetrize", "false"), bool, "symmetrize")
    if "symprec" in options and not symmetrize:
        raise UserError("symprec= is the tolerance of symmetrize=true; add symmetrize=true or drop symprec=")
    return {"symmetrize": symmetrize, "symprec": check_symprec(options.get("symprec", STATED_SYMPREC))}


EVALUATE_KEYS = {"checkpoint", "data", "split", "field", "limit", "device", "out", "symmetrize", "symprec"}


@app.command("evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Decode a split and score it: nesfgen evaluate [checkpoint=RUN[,RUN|GLOB]] [data=NAME] [split=test] [field=exact] [out=DIR] [symmetrize=true [symprec=0.1]].

    Without checkpoint= the shipped default model (nesf-lcs6) is used; without data= the dataset the
    model was trained on.
    """
    from nesfgen.config import parse_value
    from nesfgen.evaluate import (
        AGGREGATION_NOTE,
        evaluate,
        expand_checkpoints,
        markdown_table,
        recovery_key,
        summarise_runs,
        symmetry_markdown,
        write_report,
    )
    from nesfgen.files import output_folder

    options = _key_values(ctx, "evaluate", EVALUATE_KEYS)
    symmetrize = _symmetrize_options(options)
    estimator = {k: v for k, v in options.items() if k.startswith("estimator.")}
    checkpoints = expand_checkpoints(options["checkpoint"]) if "checkpoint" in options else [None]  # None: default
    limit = parse_value(options.get("limit", "0"), int, "limit")
    if "out" in options:  # before decoding, not after
        output_folder(Path(options["out"]), "report folder", create=False)
    evaluations = []
    for checkpoint in checkpoints:
        bar, progress = _decode_progress(f"decoding ({checkpoint or 'exact field'})")
        with bar:
            evaluation = evaluate(
                checkpoint,
                options.get("data"),
                options.get("split", "test"),
                options.get("field", "model"),
                limit,
                options.get("device", "cpu"),
                estimator,
                progress,
                **symmetrize,
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
            stdout.print(AGGREGATION_NOTE, markup=False)
            stated = result["mean"]["symmetry_symprec"]
            key = recovery_key(stated)
            stdout.print(
                f"symmetry recovered (decoded space group = input's at {stated:g} Å): "
                f"{result['mean'][key]:.1f} ± {result['std'][key]:.1f} %"
                + (" after symmetrize" if result["each"][0]["symmetrize"] else "")
            )
        else:
            stdout.print(markdown_table(result), markup=False)
            stdout.print(AGGREGATION_NOTE, markup=False)
            stdout.print(
                f"empty decodes {result['empty_decodes']}; StructureMatcher match {result['cdvae_match_rate_pct']:.1f} % "
                f"(RMSE {result['cdvae_rmse']:.4f}); space group recovered {result['cdvae_spacegroup_match_pct']:.1f} %"
            )
            stdout.print(symmetry_markdown(result), markup=False)
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
            [e.strip() for e in options.get("elements", "").split(",") if e.strip()],
        )
    files = write_trajectory(rows, Path(options["run"]) / "trajectory", options.get("data", "builtin"))
    emit(
        {"rows": rows, "files": [str(f) for f in files]},
        as_json,
        lambda r: stdout.print((Path(options["run"]) / "trajectory" / "trajectory.md").read_text(), markup=False),
    )


RECONSTRUCT_KEYS = {"checkpoint", "data", "split", "field", "limit", "device", "out", "symmetrize", "symprec"}


@app.command("reconstruct", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reconstruct_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Write input and decoded CIFs side by side: nesfgen reconstruct [checkpoint=RUN] [data=NAME] [split=test] out=DIR [symmetrize=true [symprec=0.1]]."""
    from nesfgen.config import parse_value
    from nesfgen.evaluate import evaluate, recovery_key, write_reconstructions
    from nesfgen.files import output_folder

    options = _key_values(ctx, "reconstruct", RECONSTRUCT_KEYS)
    symmetrize = _symmetrize_options(options)
    if "out" not in options:
        raise UserError("out=FOLDER is required: where to write the CIF pairs")
    output_folder(Path(options["out"]), "reconstruction folder", create=False)  # before decoding, not after
    bar, progress = _decode_progress("decoding")
    with bar:
        evaluation = evaluate(
            options.get("checkpoint"),
            options.get("data"),
            options.get("split", "test"),
            options.get("field", "model"),
            parse_value(options.get("limit", "0"), int, "limit"),
            options.get("device", "cpu"),
            {k: v for k, v in options.items() if k.startswith("estimator.")},
            progress,
            **symmetrize,
        )
    written = write_reconstructions(evaluation, Path(options["out"]))
    summary = evaluation.summary
    stated = summary["symmetry_symprec"]
    result = {
        "pairs": written,
        "out": options["out"],
        "symmetrize": summary["symmetrize"],
        "symmetrize_symprec": summary.get("symmetrize_symprec"),
        "symmetrize_failed": summary.get("symmetrize_failed"),
        "symmetry_symprec": stated,
        "symmetry_recovery_pct": summary[recovery_key(stated)],
    }

    def render(r: dict) -> None:
        snapped = (
            f"symmetrised within {r['symmetrize_symprec']:g} Å ({r['symmetrize_failed']} could not be)"
            if r["symmetrize"]
            else "as decoded (not symmetrised)"
        )
        stdout.print(
            f"wrote {r['pairs']} input/decoded CIF pairs to {r['out']}; decoded structures {snapped}; "
            f"space group recovered {r['symmetry_recovery_pct']:.1f} % at {r['symmetry_symprec']:g} Å",
            markup=False,
        )

    emit(result, as_json, render)


@app.command("symmetry", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def symmetry_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Space groups by spglib at a ladder of tolerances: nesfgen symmetry PATHS... | data=NAME [split=train] [limit=N] [tolerances=0.01,0.05,0.1,0.2].

    PATHS are CIF/POSCAR files or folders of them; a decoded CIF written by nesfgen reconstruct
    (X.decoded.cif beside X.input.cif) is compared with its input's space group.
    """
    from nesfgen.config import parse_overrides, parse_value
    from nesfgen.symmetry import STATED_SYMPREC, TOLERANCES, agreement, analyse_dataset, analyse_files

    options, paths = parse_overrides(list(ctx.args))
    unknown = set(options) - {"data", "split", "limit", "tolerances"}
    if unknown:
        raise UserError(
            f"unknown option {sorted(unknown)[0]} for nesfgen symmetry; valid: data, split, limit, tolerances"
        )
    tolerances = parse_value(options.get("tolerances", TOLERANCES), tuple[float, ...], "tolerances")
    if paths and "data" in options:
        raise UserError("give structure files or data=NAME, not both")
    if "data" in options:
        limit = parse_value(options.get("limit", "0"), int, "limit")
        entries = analyse_dataset(options["data"], options.get("split", "train"), limit, tolerances)
    elif paths:
        if "split" in options or "limit" in options:
            raise UserError("split= and limit= go with data=NAME, not with structure files")
        entries = analyse_files(paths, tolerances)
    else:
        raise UserError("nothing to analyse: give CIF/POSCAR files or folders, or data=NAME")
    result = {"tolerances": list(tolerances), "structures": entries, "agreement": agreement(entries)}

    def render(r: dict) -> None:
        stated = STATED_SYMPREC if STATED_SYMPREC in r["tolerances"] else r["tolerances"][-1]
        compared = r["agreement"]["decoded"] > 0
        ladder = " / ".join(f"{t:g}" for t in r["tolerances"])
        table = Table(title=f"space groups by spglib (symprec {ladder} Å)")
        table.add_column("structure", overflow="fold")
        table.add_column("formula")
        table.add_column("atoms", justify="right")
        table.add_column("number by tolerance")
        table.add_column(f"group at {stated:g} Å")
        table.add_column("Wyckoff sites")
        if compared:
            table.add_column("input's group at (Å)")
        for e in r["structures"]:
            level = next(lv for lv in e["levels"] if lv["symprec"] == stated)
            row = [e["name"], e["formula"], str(e["num_atoms"])]
            row.append(" / ".join(str(lv["number"] or "-") for lv in e["levels"]))
            row.append(f"{level['symbol']} ({level['crystal_system']})" if level["number"] else "none found")
            row.append(level["sites"])
            if compared:
                same = e["same_as_input"]
                agreed = [f"{float(t):g}" for t, ok in (same or {}).items() if ok]
                row.append("" if same is None else "all" if len(agreed) == len(same) else ", ".join(agreed) or "none")
            table.add_row(*row)
        stdout.print(table)
        if compared:
            counts = ", ".join(
                f"{float(t):g} Å {n}/{r['agreement']['decoded']}" for t, n in r["agreement"]["same_space_group"].items()
            )
            stdout.print(f"decoded structures with their input's space group: {counts}")

    emit(result, as_json, render)


SAMPLE_KEYS = {
    "checkpoint",
    "n",
    "seed",
    "temperature",
    "near",
    "radius",
    "data",
    "device",
    "out",
    "symmetrize",
    "symprec",
    "relax",
    "fmax",
    "steps",
    "hull",
    "force",
    "prior",
    "elements",
    "formula",
    "num_atoms",
    "crystal_system",
    "spacegroup",
    "guidance",
    "constrain",
    "baselines",
    "coverage_split",
}


@app.command("sample", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sample_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Generate structures: nesfgen sample [prior=flowmatch|flow|vae|FILE.pt] [checkpoint=RUN] [n=100] [seed=0] [elements=Zn,S] [formula=ZnS] [num_atoms=8] [crystal_system=cubic] [spacegroup=216] [guidance=1] [constrain=false] [baselines=true] [coverage_split=test|val] [temperature=1] [near=FORMULA|PATH radius=0.5] [data=NAME] [out=samples] [symmetrize=true] [force=true] [relax=true fmax= steps= hull=].

    Without prior= and checkpoint= the shipped autoencoder (nesf-lcs6) decodes latents of its learned
    prior; prior=vae samples the shipped VAE. Conditions need the flow-matching prior; with elements= or
    formula= the decoded species are also restricted to them (constrain=false: the prior alone). Writes one CIF
    per decoded structure as it is decoded, then samples.extxyz, samples.csv and summary.json (the
    field's metrics). An interrupted sampling continues when the same command is run again. More than
    10,000 samples need force=true; relax=true relaxes the samples into OUT/relaxed.
    """
    from nesfgen.config import parse_value
    from nesfgen.generate import BASELINES_FOLDER, sample_structures, write_samples
    from nesfgen.prior import parse_condition

    options = _key_values(ctx, "sample", SAMPLE_KEYS)
    symmetrize = _symmetrize_options(options)
    out = Path(options.get("out", "samples"))
    bar, progress = _decode_progress("decoding samples")
    on_interrupt(lambda: f"the samples decoded so far are saved in {out}; run the same command again to continue")
    with bar:
        generation = sample_structures(
            options.get("checkpoint"),
            parse_value(options.get("n", "100"), int, "n"),
            parse_value(options.get("seed", "0"), int, "seed"),
            parse_value(options.get("temperature", "1.0"), float, "temperature"),
            options.get("near"),
            parse_value(options.get("radius", "0.5"), float, "radius"),
            options.get("data"),
            options.get("device", "cpu"),
            {k: v for k, v in options.items() if k.startswith("estimator.")},
            progress,
            **symmetrize,
            out=out,
            force=parse_value(options.get("force", "false"), bool, "force"),
            prior=options.get("prior"),
            condition=parse_condition(
                options.get("elements"),
                options.get("formula"),
                parse_value(options["num_atoms"], int, "num_atoms") if "num_atoms" in options else None,
                options.get("crystal_system"),
                parse_value(options["spacegroup"], int, "spacegroup") if "spacegroup" in options else None,
            ),
            guidance=parse_value(options.get("guidance", "1.0"), float, "guidance"),
            constrain=parse_value(options.get("constrain", "true"), bool, "constrain"),
            baselines=parse_value(options.get("baselines", "false"), bool, "baselines"),
            coverage_split=options.get("coverage_split", "test"),
        )
    relax = parse_value(options.get("relax", "false"), bool, "relax")
    if not relax and any(k in options for k in ("fmax", "steps", "hull")):
        raise UserError("fmax=, steps= and hull= go with relax=true")
    write_samples(generation, out)
    result = {**generation.summary, "out": str(out)}
    if relax:  # relaxed into out/relaxed, screened against data='s hull (or hull=) when given
        relax_options = {k: options[k] for k in ("fmax", "steps", "hull", "data") if k in options}
        folders = {"samples": out} | {name: out / BASELINES_FOLDER / name for name in generation.baselines}
        relaxed = {  # the ceiling and the floor on the same hull as the samples; None: no structure to relax
            name: _relax_run([str(folder)], folder / "relaxed", relax_options) if any(folder.glob("*.cif")) else None
            for name, folder in folders.items()
        }
        result["relax"] = relaxed.pop("samples")
        if relaxed:
            result["relax_baselines"] = relaxed

    def render(r: dict) -> None:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f} %"

        source = (
            f"around {r['near']} (radius {r['radius']:g})"
            if r["near"]
            else f"from the VAE prior (T = {r['temperature']:g})"
            if r["generator"] == "vae"
            else f"from the learned {r['generator'].removeprefix('prior-')} prior (T = {r['temperature']:g})"
        )
        held_out = r["reference"].get("coverage_split") or "test"
        table = Table(title=f"{r['n']} samples {source}, seed {r['seed']}: {r['checkpoint']}")
        table.add_column("measure")
        columns = {"samples": r, **(r["baselines"] or {})}  # with baselines=true: the ceiling and floor beside
        for name in columns:
            table.add_column(name.replace("_", " "), justify="right")

        def distance(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        measures = [
            ("decoded into a crystal", lambda c: f"{c['decoded']} / {r['n'] if c is r else c['decoded']}"),
            ("structural validity (no atoms < 0.5 Å)", lambda c: pct(c["structural_validity_pct"])),
            ("compositional validity (SMACT)", lambda c: pct(c["compositional_validity_pct"])),
            ("  the training split's (SMACT)", lambda c: pct(c["train_compositional_validity_pct"])),
            ("both", lambda c: pct(c["validity_pct"])),
            (
                f"COV-R / COV-P (vs {held_out} split)",
                lambda c: f"{pct(c['cov_recall_pct'])} / {pct(c['cov_precision_pct'])}",
            ),
            ("uniqueness (of the decoded)", lambda c: pct(c["uniqueness_pct"])),
            ("novelty (of the unique, vs training)", lambda c: pct(c["novelty_pct"])),
            (f"P1 share ({held_out} split's)", lambda c: f"{pct(c['p1_pct'])} ({pct(c['test_split_p1_pct'])})"),
            *[
                (f"W1 distance, {name.replace('_', ' ')}", lambda c, name=name: distance(c[f"w1_{name}"]))
                for name in ("density", "num_atoms", "num_elements")
            ],
        ]
        for label, show in measures:
            table.add_row(label, *(show(column) for column in columns.values()))
        for name, rate in (r["conditions"] or {}).items():
            table.add_row(f"condition holds: {name.removesuffix('_pct')}", pct(rate), *[""] * (len(columns) - 1))
        stdout.print(table)
        groups = ", ".join(f"{group} × {count}" for group, count in list(r["space_groups"].items())[:8])
        stdout.print(f"space groups (spglib, 0.1 Å): {groups or 'none'}", markup=False)
        if "skipped" in r["reference"]:
            stdout.print(f"[yellow]note:[/] {escape(r['reference']['skipped'])}")
        stdout.print(
            f"wrote {r['decoded']} CIF files, samples.extxyz, samples.csv and summary.json to {r['out']}", markup=False
        )
        for name, relaxed in {"samples": r.get("relax", False), **r.get("relax_baselines", {})}.items():
            if relaxed is False:
                continue
            stdout.print(f"relaxed: {name.replace('_', ' ')}", markup=False)
            if relaxed is None:
                stdout.print("nothing to relax: no structure decoded into a crystal", markup=False)
            else:
                _render_relax(relaxed)

    emit(result, as_json, render)


PRIOR_FIT_KEYS = {
    "checkpoint",
    "data",
    "out",
    "kind",
    "hidden",
    "layers",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "threads",
}


@prior_app.command("fit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prior_fit_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Fit a latent prior: nesfgen prior fit [checkpoint=nesf-lcs6] [kind=flowmatch|flow] [steps=N] [hidden=N] [layers=N] [seed=0] out=FILE.pt."""
    from dataclasses import asdict, fields

    from nesfgen.checkpoint import DEFAULT_MODEL
    from nesfgen.config import parse_value
    from nesfgen.prior import PriorConfig, fit_model_prior

    options = _key_values(ctx, "prior fit", PRIOR_FIT_KEYS)
    if "out" not in options:
        raise UserError("nesfgen prior fit needs out=FILE.pt")
    types = {f.name: type(getattr(PriorConfig(), f.name)) for f in fields(PriorConfig)}
    values = {k: parse_value(v, types[k], k) for k, v in options.items() if k in types}
    config = PriorConfig(**values)
    bar, progress = _decode_progress(f"fitting a {config.kind} prior")
    with bar:
        prior = fit_model_prior(
            options.get("checkpoint", DEFAULT_MODEL), config, Path(options["out"]), options.get("data"), progress
        )
    result = {"out": options["out"], "config": asdict(config), **prior.history}

    def render(r: dict) -> None:
        stdout.print(
            f"fitted a {r['config']['kind']} prior on {r['structures']} latents of {r['dataset']}: loss {r['final_loss']:.4f} "
            f"after {r['steps']} steps in {r['seconds']:.0f} s; wrote {r['out']}",
            markup=False,
        )

    emit(result, as_json, render)


@prior_app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prior_check_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Compare a prior's samples with held-out latents, without decoding: nesfgen prior check [prior=flowmatch|FILE.pt] [split=val] [n=1000] [seed=0]."""
    from nesfgen.config import parse_value
    from nesfgen.generate import resolve_prior
    from nesfgen.prior import check_model_prior

    options = _key_values(ctx, "prior check", {"prior", "checkpoint", "data", "split", "n", "seed"})
    if any(key.startswith("estimator.") for key in options) or options.get("prior") == "vae":
        raise UserError("nesfgen prior check [prior=flowmatch|flow|FILE.pt] [split=val] [n=1000] [seed=0] [data=NAME]")
    checkpoint, prior = resolve_prior(options.get("prior", "flowmatch"), options.get("checkpoint"))
    with console.status("encoding the splits and sampling the prior"):
        result = check_model_prior(
            prior,
            checkpoint,
            split=options.get("split", "val"),
            n=parse_value(options.get("n", "1000"), int, "n"),
            seed=parse_value(options.get("seed", "0"), int, "seed"),
            data=options.get("data"),
        )

    def render(r: dict) -> None:
        stdout.print(
            f"{r['n']} samples against {r['dataset']}: coverage of {r['split']} {r['coverage']:.3f}, precision "
            f"{r['precision']:.3f} ({r['split']}'s own: {r['held_out_precision']:.3f}), std ratio {r['std_ratio']:.3f}",
            markup=False,
        )

    emit(result, as_json, render)


RELAX_KEYS = {"out", "fmax", "steps", "batch", "hull", "data"}


def _relax_options(options: dict[str, str]) -> Any:
    from nesfgen.config import parse_value
    from nesfgen.relax import DEFAULT_BATCH, DEFAULT_FMAX, DEFAULT_STEPS, RelaxOptions

    return RelaxOptions(
        fmax=parse_value(options.get("fmax", str(DEFAULT_FMAX)), float, "fmax"),
        steps=parse_value(options.get("steps", str(DEFAULT_STEPS)), int, "steps"),
        batch=parse_value(options.get("batch", str(DEFAULT_BATCH)), int, "batch"),
    )


def _relax_run(inputs: list[str], out: Path, options: dict[str, str]) -> dict:
    from nesfgen.stability import relax_and_screen

    bar, progress = _decode_progress("relaxing with CHGNet")
    with bar:
        return relax_and_screen(
            inputs, out, _relax_options(options), options.get("hull"), options.get("data"), progress
        )


def _render_relax(r: dict) -> None:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} %"

    table = Table(title=f"{r['n']} structures relaxed with {r['potential']} (fmax {r['fmax']:g} eV/Å)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rmsd = "n/a" if r["mean_rmsd"] is None else f"{r['mean_rmsd']:.3f} Å"
    rows = [
        ("relaxed / failed", f"{r['relaxed']} / {r['failed']}"),
        ("converged (of the relaxed)", pct(r["converged_pct"])),
        ("mean RMSD, input to relaxed", rmsd),
        (f"stable, E_hull <= 0 ({r['hull_source'] or 'no hull'})", pct(r["stable_pct"])),
        ("metastable, E_hull <= 0.1 eV/atom", pct(r["metastable_pct"])),
        ("unique", pct(r["unique_pct"])),
        (f"novel (vs {r['novelty_reference'] or 'no reference'})", pct(r["novel_pct"])),
        ("S.U.N.", pct(r["sun_pct"])),
        ("M.S.U.N.", pct(r["msun_pct"])),
        ("seconds", f"{r['seconds']:.1f}"),
    ]
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    for failure in r["failures"][:10]:
        stdout.print(f"failed: {failure['id']}: {failure['reason']}", markup=False)
    stdout.print(f"wrote relaxed CIFs, relax.csv and summary.json to {r['out']}", markup=False)


@app.command("relax", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def relax_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Relax structures with CHGNet and screen their stability: nesfgen relax INPUT... out=DIR [fmax=0.1] [steps=500] [batch=32] [hull=mp|NAME] [data=NAME].

    INPUT is a CIF/POSCAR file, a folder of them (a nesfgen sample folder) or a formula of the built-in
    table (NaCl, ZnS, Si, ...). A rerun into the same out= skips the structures already relaxed. hull=mp
    needs MP_API_KEY; hull=NAME uses the cached hull of `nesfgen data hull NAME`; data=NAME sets the
    training set for novelty (and the hull when hull= is not given).
    """
    from nesfgen.config import parse_overrides

    options, inputs = parse_overrides(list(ctx.args))
    unknown = set(options) - RELAX_KEYS
    if unknown:
        raise UserError(
            f"unknown option {sorted(unknown)[0]} for nesfgen relax; valid: {', '.join(sorted(RELAX_KEYS))}"
        )
    if not inputs:
        raise UserError("nothing to relax: give CIF/POSCAR files, folders or built-in formulas, and out=DIR")
    if "out" not in options:
        raise UserError("out=DIR is required: the folder for the relaxed CIFs, relax.csv and summary.json")
    emit(_relax_run(inputs, Path(options["out"]), options), as_json, _render_relax)


@app.command("package", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def package_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Ship a run as a package model with its model card: nesfgen package run=RUN name=NAME [data=NAME] [split=test] [out=DIR]."""
    from nesfgen.card import package_model
    from nesfgen.checkpoint import PACKAGED_MODELS

    options = _key_values(ctx, "package", {"run", "name", "data", "split", "out"})
    for required in ("run", "name"):
        if required not in options:
            raise UserError(f"{required}= is required: nesfgen package run=RUN_DIR name=MODEL_NAME")
    bar, progress = _decode_progress("decoding")
    with bar:
        packaged = package_model(
            Path(options["run"]),
            options["name"],
            options.get("data"),
            options.get("split", "test"),
            Path(options.get("out", PACKAGED_MODELS)),
            progress,
        )
    result = {"checkpoint": str(packaged.checkpoint), "card": str(packaged.card), **packaged.evaluation.summary}

    def render(result: dict) -> None:
        from nesfgen.evaluate import markdown_table

        stdout.print(markdown_table(result), markup=False)
        stdout.print(f"wrote {result['checkpoint']} and its card {result['card']}", markup=False)

    emit(result, as_json, render)


@app.command("cv", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cv_command(
    ctx: typer.Context,
    folds: str = typer.Option("0-19", help="Folds to run, e.g. 0-19 or 0,3,5."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cross-validation: train and evaluate every fold (nesfgen cv recipe=paper-ybco [out=DIR] [key=value ...])."""
    from nesfgen.config import load_recipe, parse_overrides
    from nesfgen.crossval import cross_validate, crossval_markdown, parse_folds
    from nesfgen.files import atomic_write_text

    overrides, positional = parse_overrides(list(ctx.args))
    if positional:
        raise UserError(f"unexpected argument(s) {' '.join(positional)}. {OVERRIDES_HELP}")
    out = overrides.pop("out", None)
    recipe = load_recipe(overrides.pop("recipe", "paper-ybco"), overrides)
    out = Path(out or f"runs/cv-{recipe.name}")
    progress = None if as_json else RichTrainProgress()
    on_interrupt(lambda: f"finished epochs are saved under {out}; run the same command again to continue")
    try:
        result = cross_validate(recipe, parse_folds(folds), out, progress)
    finally:
        if progress:
            progress.stop()
    report = crossval_markdown(result, recipe.data.name)
    atomic_write_text(out / "cv.md", report)
    atomic_write_text(out / "cv.json", json.dumps(result, indent=1, default=str))

    def render(r: dict) -> None:
        stdout.print(report, markup=False)
        stdout.print(f"written: {out / 'cv.md'}, {out / 'cv.json'}", markup=False)

    emit(result, as_json, render)


class RichTuneProgress:
    """A status line with the running trial's epoch; one printed line per finished trial."""

    def __init__(self) -> None:
        self.status = console.status("starting the first trial")

    def epoch(self, trial: int, row: dict) -> None:
        self.status.update(f"trial {trial}: epoch {row['epoch']}, validation loss {row['val_total']:.4f}")

    def trial(self, row: dict) -> None:
        values = ", ".join(f"{v:.5g}" for v in row["values"]) if row["values"] else ""
        params = " ".join(f"{k}={_short(v)}" for k, v in row["params"].items())
        seconds = f"{row['seconds']:.0f} s" if row["seconds"] is not None else ""
        console.print(
            f"trial {row['number']:>3} {row['state']:<8} {values:<12} {row['epochs'] or 0:>3} epochs {seconds:>6}  {params}",
            highlight=False,
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


TUNE_KEYS = {
    "run": {"study", "n_trials", "timeout", "storage", "worker"},
    "show": {"study", "storage", "limit"},
    "export": {"study", "storage", "out", "trial"},
}


def _seconds(text: str) -> float:
    """``3600``, ``90m`` or ``2h`` as seconds."""
    from nesfgen.config import parse_value

    units = {"s": 1, "m": 60, "h": 3600}
    unit = text[-1:] if text[-1:] in units else "s"
    number = parse_value(text.removesuffix(unit) if text[-1:] in units else text, float, "timeout (e.g. 3600, 90m, 2h)")
    if number <= 0:
        raise UserError(f"timeout must be positive, got {text!r}")
    return number * units[unit]


@app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Optuna search: nesfgen tune study=NAME [n_trials=N] [timeout=2h] [storage=URL] [worker=K];
    `nesfgen tune study=NAME show` prints the leaderboard and writes plots; `... export [out=FILE] [trial=N]`
    writes the best trial as a recipe."""
    import optuna

    from nesfgen import tune
    from nesfgen.config import parse_overrides, parse_value

    options, positional = parse_overrides(list(ctx.args))
    action = positional[0] if positional else "run"
    if positional and (len(positional) > 1 or action not in ("show", "export")):
        raise UserError(
            f"unexpected argument(s) {' '.join(positional)}; nesfgen tune takes key=value pairs and show or export"
        )
    for key in options:
        if key not in TUNE_KEYS[action]:
            raise UserError(
                f"unknown option {key} for nesfgen tune {action}; valid: {', '.join(sorted(TUNE_KEYS[action]))}"
            )
    if "study" not in options:
        raise UserError(f"study=NAME is required; shipped studies: {', '.join(tune.study_names())} (or a .toml path)")
    spec = tune.load_study(options["study"])
    storage = options.get("storage")
    if action == "show":
        result = tune.show_study(spec, storage)
        emit(result, as_json, lambda r: _render_leaderboard(r, parse_value(options.get("limit", "20"), int, "limit")))
        return
    if action == "export":
        trial = parse_value(options["trial"], int, "trial") if "trial" in options else None
        result = tune.export_recipe(spec, storage, Path(options["out"]) if "out" in options else None, trial)
        emit(
            result,
            as_json,
            lambda r: stdout.print(
                f"wrote trial {r['trial']} as {r['path']}\nnext: nesfgen train recipe={r['path']}", highlight=False
            ),
        )
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # failures still show; our own line reports each trial
    progress = None if as_json else RichTuneProgress()
    n_trials = parse_value(options["n_trials"], int, "n_trials") if "n_trials" in options else None
    timeout = _seconds(options["timeout"]) if "timeout" in options else None
    worker = parse_value(options.get("worker", "0"), int, "worker")
    if progress:
        console.print(
            f"[bold]study {escape(spec.name)}[/]: {', '.join(f'{o.metric} ({o.direction})' for o in spec.objectives)}, "
            + escape(
                f"{n_trials or spec.n_trials} trials of recipe {spec.recipe.name}, "
                f"storage {tune.redact(tune.storage_url(spec, storage))}"
            ),
            highlight=False,
        )
        progress.status.start()
    on_interrupt(
        lambda: (
            "finished trials are stored; run the same command again to continue the study "
            "(the interrupted trial is run again)"
        )
    )
    try:
        result = tune.run_study(spec, n_trials, timeout, storage, worker, progress)
    finally:
        if progress:
            progress.status.stop()

    def render(r: dict) -> None:
        counts = ", ".join(f"{n} {state}" for state, n in r["trials"].items())
        stdout.print(
            f"[green]done[/]: study {escape(r['study'])} holds {counts} trials; this worker ran {len(r['ran'])}"
        )
        for row in r["best"][:1]:
            values = ", ".join(f"{v:.5g}" for v in row["values"])
            stdout.print(f"best: trial {row['number']} ({values}) {row['params']}", highlight=False, markup=False)
        stdout.print(
            f"next: nesfgen tune study={options['study']} show; nesfgen tune study={options['study']} export",
            highlight=False,
        )

    emit(result, as_json, render)


def _render_leaderboard(result: dict, limit: int) -> None:
    objectives = result["objectives"]
    params = list(dict.fromkeys(key for row in result["rows"] for key in row["params"]))
    table = Table(title=f"study {result['study']} ({result['storage']})")
    table.add_column("trial", justify="right")
    table.add_column("state")
    for name in objectives:
        table.add_column(name, justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("s", justify="right")
    for key in params:
        table.add_column(key, justify="right")
    front = {row["number"] for row in result["best"]}
    for row in result["rows"][:limit]:
        values = row["values"] or [None] * len(objectives)
        table.add_row(
            f"{row['number']}{' *' if row['number'] in front else ''}",
            row["state"] + (" (baseline)" if row.get("baseline") else ""),
            *("" if v is None else f"{v:.5g}" for v in values),
            str(row["epochs"] or ""),
            "" if row["seconds"] is None else f"{row['seconds']:.0f}",
            *(_short(row["params"].get(key, "")) for key in params),
        )
    stdout.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in result["trials"].items())
    stdout.print(
        f"{counts}; * = best (Pareto front for several objectives); baseline = the study's recipe unchanged",
        highlight=False,
    )
    stdout.print(f"plots: {', '.join(result['plots'])}", highlight=False, markup=False)


@bench_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_train_command(
    ctx: typer.Context,
    steps: int = typer.Option(6, min=1, help="Timed training steps (after 2 warm-up steps)."),
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
            f"matmul FLOP rate {r['achieved_gflops']:.1f} GFLOP/s = {r['fraction_of_matmul']:.2g} × this machine's dense "
            f"{r['precision']} matmul (median {r['matmul_gflops']:.1f} GFLOP/s, "
            f"{r['matmul_gflops_range'][0]:.0f}-{r['matmul_gflops_range'][1]:.0f} between the steps)"
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
            f"{r['structures']} structures on {r['device']} (estimator.mode={r['mode']}): "
            f"{r['structures_per_second']:.2f} structures/s batched, "
            f"{r['structures_per_second_one_at_a_time']:.2f} one at a time (batching ×{r['batching_speedup']:.2f}); "
            f"{r['field_evaluations_per_second']:,.0f} field evaluations/s; {r['achieved_gflops']:.1f} GFLOP/s = "
            f"{r['fraction_of_matmul']:.2g} × dense fp32 matmul ({r['matmul_gflops']:.1f} GFLOP/s, measured now)\n"
            f"speedup over estimator.mode=paper: ×{r['speedup_vs_paper']:.1f} ({r['seconds']:.1f} s against "
            f"{r['paper_seconds']:.1f} s, {r['field_evaluations']:,} against {r['paper_field_evaluations']:,} "
            "field evaluations, this run)"
        )

    emit(result, as_json, render)


INTERPOLATE_KEYS = {"checkpoint", "steps", "out", "device", "symmetrize", "symprec"}


@app.command("interpolate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def interpolate_command(
    ctx: typer.Context,
    a: str = typer.Argument(
        ..., metavar="A", help="Start: a CIF/POSCAR file, a material id (mp-10695, known-ZnS-zincblende) or a formula."
    ),
    b: str = typer.Argument(..., metavar="B", help="End: the same kinds."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Decode the line between two crystals' latents: nesfgen interpolate A B [checkpoint=RUN] [steps=7] [out=DIR] [symmetrize=true] [symprec=0.1].

    A formula is looked up in the local datasets and the built-in table of textbook compounds (then the
    Materials Project with MP_API_KEY set, then the generated built-in dataset). Without checkpoint= the
    shipped default model (nesf-lcs6) is used. Writes a.input.cif, b.input.cif, step-NN.cif,
    interpolation.json and interpolation.png into out= (default runs/interpolate-A-B).
    """
    from nesfgen.config import parse_value
    from nesfgen.latent import interpolate, interpolation_folder, write_interpolation
    from nesfgen.symmetry import STATED_SYMPREC

    options = _key_values(ctx, "interpolate", INTERPOLATE_KEYS)
    for endpoint in (a, b):
        if "=" in endpoint:
            raise UserError(
                f"{endpoint!r} came where an endpoint belongs: give the endpoints A B first, then key=value"
            )
    bar, progress = _decode_progress("decoding")
    with bar:
        result = interpolate(
            a,
            b,
            options.get("checkpoint"),
            parse_value(options.get("steps", "7"), int, "steps"),
            options.get("device", "cpu"),
            {k: v for k, v in options.items() if k.startswith("estimator.")},
            parse_value(options.get("symprec", STATED_SYMPREC), float, "symprec"),
            parse_value(options.get("symmetrize", "false"), bool, "symmetrize"),
            progress,
        )
    write_interpolation(result, Path(options.get("out") or interpolation_folder(a, b)))
    emit(result.summary(), as_json, _render_interpolation)


def _render_interpolation(summary: dict) -> None:
    for label in ("a", "b"):
        e = summary[label]
        stdout.print(
            f"[bold]{label.upper()}[/] "
            + escape(
                f"{e['query']} → {e['id']} ({e['formula']}, {e['num_atoms']} atoms, {e['space_group']}) from "
                f"{e['source']}" + (f"; chosen: {e['reason']}" if e["reason"] else "")
            ),
            highlight=False,
        )
        if e["alternatives"]:
            shown = e["alternatives"][:5]
            more = f" … and {len(e['alternatives']) - 5} more (--json lists all)" if len(e["alternatives"]) > 5 else ""
            stdout.print("   others: " + "; ".join(shown) + more, highlight=False, markup=False)
    a, b = summary["a"]["reduced_formula"], summary["b"]["reduced_formula"]
    table = Table(title=f"{a} → {b}" + (" (symmetrised)" if summary["symmetrized"] else ""))
    columns = ("step", "t", "formula", "reduced", "atoms", "a", "b", "c", "α", "β", "γ", "space group")
    for column in (*columns, f"% {a} (A)", f"% {b} (B)", "% other"):
        table.add_column(column, justify="left" if column in ("formula", "reduced", "space group") else "right")
    percent = lambda value: "—" if value is None else f"{100 * value:.0f}"  # noqa: E731
    for row in summary["rows"]:
        if row["formula"] is None:
            table.add_row(str(row["step"]), f"{row['t']:.2f}", "nothing decoded", *[""] * 12)
            continue
        group = f"{row['space_group_symbol']} ({row['space_group']})" if row["space_group"] else "none found"
        table.add_row(
            str(row["step"]),
            f"{row['t']:.2f}",
            row["formula"],
            row["reduced_formula"],
            str(row["num_atoms"]),
            *(f"{row[k]:.3f}" for k in ("a", "b", "c")),
            *(f"{row[k]:.1f}" for k in ("alpha", "beta", "gamma")),
            group,
            percent(row["share_a"]),
            percent(row["share_b"]),
            percent(row["share_other"]),
        )
    stdout.print(table)
    recovered = {k: "yes" if summary[f"{k}_recovered"] else "no" for k in ("a", "b")}
    stdout.print(f"endpoints decoded to their own composition and atom count: A {recovered['a']}, B {recovered['b']}")
    if summary["intermediate_only_end_elements_pct"] is not None:
        share = summary["intermediate_only_end_elements_pct"]
        stdout.print(f"steps between the ends holding only the ends' elements: {share:.0f} %")
    stdout.print(f"written: {Path(summary['files'][0]).parent}/ ({len(summary['files'])} files)", markup=False)


EMBED_KEYS = {"checkpoint", "data", "split", "out", "device"}


@app.command("embed", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def embed_command(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Latents of a split with ids: nesfgen embed [checkpoint=RUN] [data=NAME] [split=test|all] [out=FILE.npz|.csv].

    Each structure's id, split, reduced formula, cell volume, atoms per cell and space group are stored
    beside its latent, for nesfgen map. Defaults: the shipped model, the dataset it was trained on,
    out=runs/latents-DATASET-SPLIT.npz.
    """
    from nesfgen.latent import embed, save_embedding

    options = _key_values(ctx, "embed", EMBED_KEYS)
    if any(k.startswith("estimator.") for k in options):
        raise UserError("nesfgen embed only encodes; estimator.* options do not apply")
    split = options.get("split", "test")
    with console.status("encoding"):
        embedding = embed(options.get("checkpoint"), options.get("data"), split, options.get("device", "cpu"))
    out = Path(options.get("out") or Path("runs") / f"latents-{embedding.meta['dataset']}-{split}.npz")
    save_embedding(embedding, out)
    result = {
        **embedding.meta,
        "structures": len(embedding),
        "latent_size": embedding.latents.shape[1],
        "out": str(out),
    }
    emit(
        result,
        as_json,
        lambda r: stdout.print(
            f"wrote {r['structures']} latents ({r['latent_size']} dimensions) of {r['dataset']} / {r['split']} to "
            f"{r['out']}\nnext: nesfgen map {r['out']}",
            highlight=False,
        ),
    )


@app.command("map", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def map_command(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ..., metavar="LATENTS", help="A latents file written by nesfgen embed (.npz or .csv)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Project latents to 2-D: nesfgen map LATENTS [method=tsne|pca] [out=DIR] [perplexity=30] [seed=0].

    Writes map.csv (2-D coordinates), map.json and three PNGs coloured by cell volume, atoms per cell
    and space group (the paper's Fig. 7) into out= (default: beside LATENTS, named LATENTS-METHOD).
    """
    from nesfgen.config import parse_value
    from nesfgen.latent import load_embedding, project, write_map

    options = _key_values(ctx, "map", {"method", "out", "perplexity", "seed"})
    if any(k.startswith("estimator.") for k in options):
        raise UserError("nesfgen map only projects latents; estimator.* options do not apply")
    method = options.get("method", "tsne")
    embedding = load_embedding(source)
    with console.status(f"{method} of {len(embedding)} latents"):
        coords, info = project(
            embedding.latents,
            method,
            parse_value(options.get("seed", "0"), int, "seed"),
            parse_value(options.get("perplexity", "30"), float, "perplexity"),
        )
    out = Path(options.get("out") or source.with_name(f"{source.stem}-{method}"))
    files = write_map(embedding, coords, method, out, info)
    result = {"method": method, "structures": len(embedding), **info, "files": [str(f) for f in files]}
    emit(
        result,
        as_json,
        lambda r: stdout.print(
            f"{r['method']} map of {r['structures']} latents: " + ", ".join(r["files"]), markup=False
        ),
    )


#: The exit status of an interrupted command (128 + SIGINT), as shells report it.
INTERRUPTED = 130
#: What an interrupted command has kept and how to continue it; set by commands with resumable state.
_resume_hint: Callable[[], str] | None = None


def on_interrupt(hint: Callable[[], str]) -> None:
    """Say, if the command is interrupted from now on, what it kept and how to continue (called at that time)."""
    global _resume_hint
    _resume_hint = hint


def _print_error(label: str, message: str) -> None:
    """One message on stderr, printed as plain text: brackets in it are data (arrays, paths), not markup."""
    from rich.text import Text

    console.print(Text.assemble((label, "red"), " ", message), highlight=False, soft_wrap=True)


def _report_interrupt() -> None:
    from rich.text import Text

    hint = _resume_hint() if _resume_hint else ""
    console.print(
        Text.assemble(("interrupted", "yellow"), f": {hint}" if hint else ""), highlight=False, soft_wrap=True
    )


def main() -> None:
    """Entry point: user mistakes exit 2 with a message, an interrupt exits 130, internal errors exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        # Outside standalone mode typer turns Ctrl-C into a returned exit code (130) rather than raising it.
        code = app(standalone_mode=False)
    except UserError as error:
        _print_error("error:", str(error))
        sys.exit(2)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except SystemExit:
        raise
    except Exception as error:  # a click usage error is a user mistake too
        try:
            from click.exceptions import ClickException
        except ImportError:  # newer typer releases vendor click instead of depending on it
            from typer._click.exceptions import ClickException

        if isinstance(error, ClickException):
            error.show()
            sys.exit(2)
        if isinstance(error, OSError) and error.errno in OS_ERROR_REASONS:  # a full disk, a read-only folder ...
            where = f"{error.filename}: " if error.filename else ""
            _print_error("error:", f"{where}{os_error_reason(error)}")
            sys.exit(2)
        if isinstance(error, typer.Abort):
            code = INTERRUPTED
        else:
            console.print_exception()
            _print_error("internal error:", "this is a bug in nesfgen; please report it with the trace above")
            sys.exit(1)
    if code == INTERRUPTED:
        _report_interrupt()
        sys.exit(INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
