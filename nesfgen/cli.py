"""The ``nesfgen`` command line: each command parses its words into an options dataclass, calls one library
function and renders the result (tables in :mod:`nesfgen.views`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from nesfgen import views
from nesfgen.allocator import keep_freed_memory
from nesfgen.errors import UserError
from nesfgen.views import console, stdout

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

JSON = typer.Option(False, "--json", help="Print one machine-readable JSON document on stdout.")
KEY_VALUES = {"allow_extra_args": True, "ignore_unknown_options": True}


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print a result as JSON (stdout) or through a rich renderer."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    else:
        render(result)


def options(cls: type, ctx: typer.Context, command: str, **given: Any) -> Any:
    """The command's key=value words (plus values typer already parsed) as its options dataclass."""
    from nesfgen.options import parse_options

    return parse_options(cls, list(ctx.args), command, **given)


@app.command("recipes")
def recipes_command(as_json: bool = JSON) -> None:
    """List the shipped training recipes."""
    from nesfgen.config import recipe_rows

    emit(recipe_rows(), as_json, views.recipes)


@data_app.command("import")
def data_import(
    src: Path = typer.Argument(..., help="Source: a paper dataset folder/prefix, a CIF folder, or a CDVAE CSV."),
    format: str = typer.Option(..., "--format", "-f", help="paper | cif | cdvae-csv"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Dataset folder to write."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Import the valid entries and report the rest."),
    as_json: bool = JSON,
) -> None:
    """Import structures into a dataset folder (atomic: it completes or leaves nothing behind).

    With --format paper and SRC the nesf-paper folder itself, every paper dataset is imported into the
    data directory under its name (lcs6, icsg3d, ybco-fold0 ... ybco-fold19).
    """
    from nesfgen.data.importers import import_any

    emit([report.as_dict() for report in import_any(src, format, out, skip_invalid)], as_json, views.imported)


@data_app.command("info")
def data_info(
    dataset: str = typer.Argument("builtin", help="Dataset name (builtin, lcs6, ...) or folder."), as_json: bool = JSON
) -> None:
    """Counts per split, atoms per cell, species, cell sizes and training space groups of a dataset."""
    from nesfgen.data.info import dataset_info
    from nesfgen.data.names import resolve_dataset
    from nesfgen.symmetry import space_group_histogram

    found = resolve_dataset(dataset)
    emit(dataset_info(found) | {"space_groups": space_group_histogram(found)}, as_json, views.dataset_info)


@data_app.command("export")
def data_export(
    dataset: str = typer.Argument(..., help="Dataset name or folder."),
    format: str = typer.Option("cif", "--format", "-f", help="Only cif for now."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write <split>/<id>.cif into."),
    split: list[str] | None = typer.Option(None, "--split", help="Only these splits (repeatable)."),
    as_json: bool = JSON,
) -> None:
    """Write a dataset's structures as CIF files."""
    from nesfgen.data.info import export_cif
    from nesfgen.data.names import resolve_dataset

    written = export_cif(resolve_dataset(dataset), out, split, format)
    emit({"written": written, "out": str(out)}, as_json, views.exported)


@data_app.command("hull", context_settings=KEY_VALUES)
def data_hull(
    ctx: typer.Context, name: str = typer.Argument(..., help="Dataset name or folder."), as_json: bool = JSON
) -> None:
    """Build the local CHGNet convex hull of a dataset, cached beside it: nesfgen data hull NAME [split=train] [relax=false] [limit=0] [elements=Na,Cl,...] [potential=0.2.0|0.3.0]."""
    from nesfgen.stability import HullOptions, build_local_hull

    chosen = options(HullOptions, ctx, "data hull", name=name)
    with views.stage_bars() as progress:
        cache = build_local_hull(**asdict(chosen), progress=progress)
    emit({k: v for k, v in cache.items() if k != "entries"}, as_json, views.hull)


@data_app.command("fetch", context_settings=KEY_VALUES)
def data_fetch(
    ctx: typer.Context,
    selection: str = typer.Argument(..., help="lcs6 | icsg3d | ybco-like | query"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Dataset folder (default: mp-NAME in the data dir)."),
    as_json: bool = JSON,
) -> None:
    """Build a dataset from the Materials Project (needs MP_API_KEY): nesfgen data fetch lcs6 key=value ...

    Keys: seed=, split=TRAIN,VAL,TEST, folds=K, limit=N, page_size=, cache=DIR, gnome=true; lcs6 and query take
    max_length=Å; ybco-like takes candidates=CSV; query takes elements=, exclude_elements=, chemsys=, formula=,
    num_sites=MIN:MAX, num_elements=, spacegroup=, crystal_system=, energy_above_hull=, formation_energy=,
    band_gap=, volume=, density=, stable=, is_metal=, theoretical=. Pages are cached: run it again to resume.
    """
    from nesfgen.data import materials_project as mp

    on_interrupt(lambda: "downloaded pages are cached; run the same command again to continue")
    with views.progress_bars() as bar:
        result = mp.fetch_selection(selection, list(ctx.args), out, bar("fetching documents"))
    emit(result, as_json, views.fetched)


@app.command("train", context_settings=KEY_VALUES)
def train_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Train an autoencoder: nesfgen train [recipe=NAME] [out=RUN_DIR] [resume=RUN_DIR] [report=false] [key=value ...].

    At the end the kept model decodes the validation split (its first 128 structures): the figures are
    printed and RUN_DIR/report.json and RUN_DIR/reconstruction.png written; report=false skips this.
    """
    from nesfgen.config import load_recipe, parse_value, to_toml
    from nesfgen.options import recipe_words
    from nesfgen.report import report_run, training_summary
    from nesfgen.run_folder import new_run_dir, resume_hint
    from nesfgen.train import resume, train

    overrides, extra = recipe_words(list(ctx.args), "train", ("recipe", "out", "resume", "report"))
    resume_dir, out = extra.get("resume"), extra.get("out")
    if resume_dir and ("recipe" in extra or out):
        raise UserError("resume= continues its run with the run's own recipe and folder: drop recipe= and out=")
    with_report = parse_value(extra.get("report", "true"), bool, "report")
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    with views.training_bars(not as_json and main_rank) as progress:
        if resume_dir:
            run_dir = Path(resume_dir)
        else:
            recipe = load_recipe(extra.get("recipe", "quickstart"), overrides)
            if progress:
                console.print(to_toml(recipe, header="# resolved recipe"), highlight=False, markup=False)
            run_dir = Path(out) if out else new_run_dir(recipe.name)
        on_interrupt(lambda: resume_hint(run_dir))
        result = resume(run_dir, overrides, progress) if resume_dir else train(recipe, run_dir, progress)
    if not main_rank:
        return
    summary = training_summary(result)
    if with_report and (result.run_dir / "best.pt").is_file():
        with views.progress_bars() as bar:
            summary["report"] = report_run(result.run_dir, progress=bar("decoding the validation split")).as_dict()
    emit(summary, as_json, views.trained)


@app.command("refit", context_settings=KEY_VALUES)
def refit_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Refit a trained run's lattice heads on eval-mode latents: nesfgen refit run=RUN [epochs=300] [lr=3e-4] [init=fresh|trained].

    Rewrites RUN/best.pt and keeps the checkpoint as trained in RUN/best.before-refit.pt.
    """
    from nesfgen.refit import RefitOptions, describe_refit
    from nesfgen.train import refit_best

    chosen = options(RefitOptions, ctx, "refit")
    with console.status("refitting the lattice heads"):
        refit = refit_best(Path(chosen.run), chosen.epochs, chosen.lr, init=chosen.init).as_dict()
    emit({"run": chosen.run, **refit}, as_json, lambda r: stdout.print(describe_refit(r), markup=False))


@app.command("evaluate", context_settings=KEY_VALUES)
def evaluate_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Decode a split and score it: nesfgen evaluate [checkpoint=RUN[,RUN|GLOB]|RUN+RUN (ensemble)] [data=NAME] [split=test] [field=exact] [out=DIR] [symmetrize=true [symprec=0.1]].

    Without checkpoint= the shipped default model (nesf-lcs6) is used; without data= the dataset the
    model was trained on.
    """
    from nesfgen.evaluate import EvaluateOptions, evaluate_runs

    chosen = options(EvaluateOptions, ctx, "evaluate")
    emit(views.with_bars(lambda bar: evaluate_runs(chosen, bar)), as_json, views.evaluation)


@app.command("trajectory", context_settings=KEY_VALUES)
def trajectory_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Accuracy against training time: nesfgen trajectory run=RUN data=NAME [split=test] [limit=N]."""
    from nesfgen.evaluate import TrajectoryOptions, evaluate_trajectory

    chosen = options(TrajectoryOptions, ctx, "trajectory")
    with views.progress_bars() as bar:
        result = evaluate_trajectory(chosen, bar("decoding snapshots"))
    emit(result, as_json, lambda r: stdout.print(r["table"], markup=False))


@app.command("reconstruct", context_settings=KEY_VALUES)
def reconstruct_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Write input and decoded CIFs side by side: nesfgen reconstruct [checkpoint=RUN] [data=NAME] [split=test] out=DIR [symmetrize=true [symprec=0.1]]."""
    from nesfgen.evaluate import EvaluateOptions, reconstruct

    chosen = options(EvaluateOptions, ctx, "reconstruct")
    emit(views.with_bars(lambda bar: reconstruct(chosen, bar("decoding"))), as_json, views.reconstruction)


@app.command("symmetry", context_settings=KEY_VALUES)
def symmetry_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Space groups by spglib at a ladder of tolerances: nesfgen symmetry PATHS... | data=NAME [split=train] [limit=N] [tolerances=0.01,0.05,0.1,0.2].

    PATHS are CIF/POSCAR files or folders of them; a decoded CIF written by nesfgen reconstruct
    (X.decoded.cif beside X.input.cif) is compared with its input's space group.
    """
    from nesfgen.symmetry import SymmetryOptions, symmetry_table

    emit(symmetry_table(options(SymmetryOptions, ctx, "symmetry")), as_json, views.symmetry)


@app.command("sample", context_settings=KEY_VALUES)
def sample_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Generate structures: nesfgen sample [prior=flowmatch|flow|vae|FILE.pt] [checkpoint=RUN] [n=100] [seed=0] [elements=Zn,S] [formula=ZnS] [num_atoms=8] [crystal_system=cubic] [spacegroup=216] [draw=composition,num_atoms|none] [guidance=1] [constrain=false] [redraws=N] [baselines=true] [coverage_split=test|val] [temperature=T] [near=FORMULA|PATH radius=0.5] [data=NAME] [out=samples] [symmetrize=false] [symprec=0.3] [force=true] [relax=true fmax= steps= hull= potential=].

    Without prior= and checkpoint= the shipped autoencoder (nesf-lcs6) decodes latents of its learned
    prior; prior=vae samples the shipped VAE. Conditions need the flow-matching prior; with elements=, formula=
    or num_atoms= the decoded species and count are also held to them (constrain=false: the prior alone). Writes one CIF
    per decoded structure as it is decoded, then samples.extxyz, samples.csv and summary.json (the
    field's metrics). An interrupted sampling continues when the same command is run again. More than
    10,000 samples need force=true; relax=true relaxes them into OUT/relaxed; symmetrize=false: raw decodes.
    """
    from nesfgen.generate import DEFAULT_FOLDER, SampleOptions, sample

    chosen = options(SampleOptions, ctx, "sample")
    out = chosen.out or DEFAULT_FOLDER
    on_interrupt(lambda: f"the samples decoded so far are saved in {out}; run the same command again to continue")
    emit(views.with_bars(lambda bar: sample(chosen, bar)), as_json, views.samples)


@prior_app.command("fit", context_settings=KEY_VALUES)
def prior_fit_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Fit a latent prior: nesfgen prior fit [checkpoint=nesf-lcs6] [kind=flowmatch|flow] [steps=N] [hidden=N] [layers=N] [seed=0] out=FILE.pt."""
    from nesfgen.prior import PriorFitOptions, fit_model_prior

    chosen = options(PriorFitOptions, ctx, "prior fit")
    with views.progress_bars() as bar:
        prior = fit_model_prior(
            chosen.checkpoint, chosen.config, Path(chosen.out), chosen.data, bar(f"fitting a {chosen.kind} prior")
        )
    emit({"out": chosen.out, "config": asdict(chosen.config), **prior.history}, as_json, views.prior_fit)


@prior_app.command("check", context_settings=KEY_VALUES)
def prior_check_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Compare a prior's samples with held-out latents, without decoding: nesfgen prior check [prior=flowmatch|FILE.pt] [split=val] [n=1000] [seed=0]."""
    from nesfgen.generate import PriorCheckOptions, check_prior

    chosen = options(PriorCheckOptions, ctx, "prior check")
    emit(
        views.with_status("encoding the splits and sampling the prior", lambda: check_prior(chosen)),
        as_json,
        views.prior_check,
    )


@app.command("relax", context_settings=KEY_VALUES)
def relax_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Relax structures with CHGNet and screen their stability: nesfgen relax INPUT... out=DIR [fmax=0.1] [steps=500] [rattle=0.02] [batch=32] [workers=1] [hull=mp|NAME] [data=NAME] [potential=0.2.0|0.3.0].

    INPUT is a CIF/POSCAR file, a folder of them (a nesfgen sample folder) or a formula of the built-in
    table (NaCl, ZnS, Si, ...). A rerun into the same out= skips the structures already relaxed. hull=mp
    needs MP_API_KEY; hull=NAME uses the cached hull of `nesfgen data hull NAME`; data=NAME sets the
    training set for novelty (and the hull when hull= is not given).
    """
    from nesfgen.stability import ScreenOptions, relax_and_screen

    chosen = options(ScreenOptions, ctx, "relax")
    emit(views.with_bars(lambda bar: relax_and_screen(chosen, bar("relaxing with CHGNet"))), as_json, views.relaxation)


@app.command("package", context_settings=KEY_VALUES)
def package_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Ship a run with its model card: nesfgen package run=RUN name=NAME [data=NAME] [split=test] [out=DIR] [seeds=PAGE.json] [force=true]."""
    from nesfgen.card import PackageOptions, package_model

    chosen = options(PackageOptions, ctx, "package")
    with views.progress_bars() as bar:
        packaged = package_model(chosen, bar("decoding"))
    result = {"checkpoint": str(packaged.checkpoint), "card": str(packaged.card), **packaged.evaluation.summary}
    emit(result, as_json, views.packaged)


@app.command("cv", context_settings=KEY_VALUES)
def cv_command(
    ctx: typer.Context,
    folds: str = typer.Option("0-19", help="Folds to run, e.g. 0-19 or 0,3,5."),
    as_json: bool = JSON,
) -> None:
    """Cross-validation: train every fold, evaluate and pool them (nesfgen cv recipe=paper-ybco [split=val] [fit_steps=N] [members=N: seeds a fold, decoded as one field] [partners=RECIPE,...: other recipes a fold, likewise] [out=DIR] [key=value ...])."""
    from nesfgen.crossval import CrossValidationOptions, cross_validate_into

    chosen = CrossValidationOptions.from_words(list(ctx.args), folds)
    on_interrupt(lambda: f"finished epochs are saved under {chosen.out}; run the same command again to continue")
    with views.training_bars(not as_json) as progress:
        result = cross_validate_into(chosen, progress, progress.decoding if progress else None)
    emit(result, as_json, views.markdown_report)


@app.command("results", context_settings=KEY_VALUES)
def results_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The paper's Table 1 from our runs: nesfgen results [runs=runs/results] [out=PAGE.md] [tables=lcs6,ybco,icsg3d] [seeds=3] [train=false].

    Trains or resumes every run the tables need (hours), evaluates each on its test split and writes the page.
    Also: folds=0-19, lcs6_recipe=, ybco_recipe=, icsg3d_recipe=, icsg3d_seeds=1, ybco_fit_steps=N (a table with
    fitted latents beside), ybco_members=N (seeds a fold) or ybco_partners=RECIPE,... (other recipes a fold), each
    fold's runs decoded as one field.
    """
    from nesfgen.results import ResultsOptions, build_results

    chosen = options(ResultsOptions, ctx, "results")
    on_interrupt(lambda: f"finished epochs are saved under {chosen.runs}; run the same command again to continue")
    with views.training_bars(not as_json) as progress:
        result = build_results(chosen, progress, progress.decoding if progress else None)
    emit(result, as_json, views.markdown_report)


@app.command("tune", context_settings=KEY_VALUES)
def tune_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Optuna search: nesfgen tune study=NAME [n_trials=N] [timeout=2h] [storage=URL] [worker=K];
    `nesfgen tune study=NAME show` prints the leaderboard and writes plots; `... export [out=FILE] [trial=N]`
    writes the best trial as a recipe."""
    from nesfgen import tune
    from nesfgen.tune.command import TuneOptions

    chosen = options(TuneOptions, ctx, "tune")
    if chosen.action == "show":
        emit(
            tune.show_study(chosen.study_spec, chosen.storage),
            as_json,
            lambda r: views.leaderboard(r, chosen.limit or 20),
        )
        return
    if chosen.action == "export":
        result = tune.export_recipe(chosen.study_spec, chosen.storage, chosen.out_path, chosen.trial)
        emit(result, as_json, views.exported_trial)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # failures still show; our own line reports each trial
    on_interrupt(lambda: "finished trials are stored; run the same command again (the interrupted trial runs again)")
    with views.tune_status(not as_json, chosen.study_spec, chosen.n_trials, chosen.storage) as progress:
        result = tune.run_study(
            chosen.study_spec, chosen.n_trials, chosen.timeout_seconds, chosen.storage, chosen.worker or 0, progress
        )
    emit(result, as_json, views.tuned)


@bench_app.command("train", context_settings=KEY_VALUES)
def bench_train_command(
    ctx: typer.Context,
    steps: int = typer.Option(6, min=1, help="Timed training steps (after 2 warm-up steps)."),
    as_json: bool = JSON,
) -> None:
    """Training throughput: nesfgen bench train [recipe=NAME] [key=value ...]."""
    from nesfgen.bench import bench_train
    from nesfgen.config import load_recipe
    from nesfgen.options import recipe_words

    overrides, extra = recipe_words(list(ctx.args), "bench train", ("recipe",))
    recipe = load_recipe(extra.get("recipe", "quickstart"), overrides)
    emit(
        views.with_status("timing training steps", lambda: bench_train(recipe, steps=steps)), as_json, views.bench_train
    )


@bench_app.command("estimate", context_settings=KEY_VALUES)
def bench_estimate_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Decoding throughput: nesfgen bench estimate checkpoint=RUN [data=NAME] [split=test] [limit=32] [single=4]."""
    from nesfgen.bench import BenchEstimateOptions, bench_checkpoint

    chosen = options(BenchEstimateOptions, ctx, "bench estimate")
    emit(
        views.with_status(f"decoding {chosen.limit} structures", lambda: bench_checkpoint(chosen)),
        as_json,
        views.bench_estimate,
    )


@app.command("interpolate", context_settings=KEY_VALUES)
def interpolate_command(
    ctx: typer.Context,
    a: str = typer.Argument(..., metavar="A", help="Start: a CIF/POSCAR file, a material id or a formula."),
    b: str = typer.Argument(..., metavar="B", help="End: the same kinds."),
    as_json: bool = JSON,
) -> None:
    """Decode the line between two crystals' latents: nesfgen interpolate A B [checkpoint=RUN] [steps=7] [out=DIR] [symmetrize=true] [symprec=0.1].

    A formula is looked up in the local datasets and the built-in table of textbook compounds (then the
    Materials Project with MP_API_KEY set, then the generated built-in dataset). Without checkpoint= the
    shipped default model (nesf-lcs6) is used. Writes a.input.cif, b.input.cif, step-NN.cif,
    interpolation.json and interpolation.png into out= (default runs/interpolate-A-B).
    """
    from nesfgen.latent import InterpolateOptions, interpolate_into_folder

    chosen = options(InterpolateOptions, ctx, "interpolate", a=a, b=b)
    emit(views.with_bars(lambda bar: interpolate_into_folder(chosen, bar("decoding"))), as_json, views.interpolation)


@app.command("embed", context_settings=KEY_VALUES)
def embed_command(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Latents of a split with ids: nesfgen embed [checkpoint=RUN] [data=NAME] [split=test|all] [out=FILE.npz|.csv].

    Each structure's id, split, reduced formula, cell volume, atoms per cell and space group are stored
    beside its latent, for nesfgen map. Defaults: the shipped model, the dataset it was trained on,
    out=runs/latents-DATASET-SPLIT.npz.
    """
    from nesfgen.latent import EmbedOptions, embed_to_file

    chosen = options(EmbedOptions, ctx, "embed")
    emit(views.with_status("encoding", lambda: embed_to_file(chosen)), as_json, views.embedded)


@app.command("map", context_settings=KEY_VALUES)
def map_command(
    ctx: typer.Context,
    source: Path = typer.Argument(..., metavar="LATENTS", help="A latents file written by nesfgen embed."),
    as_json: bool = JSON,
) -> None:
    """Project latents to 2-D: nesfgen map LATENTS [method=tsne|pca] [out=DIR] [perplexity=30] [seed=0].

    Writes map.csv (2-D coordinates), map.json and three PNGs coloured by cell volume, atoms per cell
    and space group (the paper's Fig. 7) into out= (default: beside LATENTS, named LATENTS-METHOD).
    """
    from nesfgen.latent import MapOptions, map_latents

    chosen = options(MapOptions, ctx, "map", source=str(source))
    emit(views.with_status(f"{chosen.method} of the latents", lambda: map_latents(chosen)), as_json, views.mapped)


#: The exit status of an interrupted command (128 + SIGINT), as shells report it.
INTERRUPTED = 130
#: What an interrupted command has kept and how to continue it; set by commands with resumable state.
_resume_hint: Callable[[], str] | None = None


def on_interrupt(hint: Callable[[], str]) -> None:
    """Say, if the command is interrupted from now on, what it kept and how to continue (called at that time)."""
    global _resume_hint
    _resume_hint = hint


def main() -> None:
    """Entry point: user mistakes exit 2 with a message, an interrupt exits 130, internal errors exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        # Outside standalone mode typer turns Ctrl-C into a returned exit code (130) rather than raising it.
        code = app(standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as error:  # every failure gets its exit status and message
        code = views.failure(error, INTERRUPTED)
    if code == INTERRUPTED:
        views.interrupted(_resume_hint() if _resume_hint else "")
    if isinstance(code, int) and code:
        sys.exit(code)
