"""What the command line shows: the consoles, progress bars and result tables (rich).

Only :mod:`nesfgen.cli` imports this module; the library reports progress through plain callbacks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from nesfgen.progress import Progress

#: width of tables written to a file or pipe: rich's 80-column default would cut their columns to "…"
PIPED_WIDTH = 240


def _stdout_console() -> Console:
    """Results on stdout: a terminal's own width, or PIPED_WIDTH when redirected (unless COLUMNS says)."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console(soft_wrap=True)
    return Console(soft_wrap=True, width=PIPED_WIDTH)


console = Console(stderr=True)
stdout = _stdout_console()


@contextmanager
def progress_bars() -> Iterator[Callable[[str], Progress]]:
    """Transient bars on stderr; yields ``bar(label)``, which adds a bar and returns its ``(done, total)`` callback."""
    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bars:

        def bar(label: str) -> Progress:
            task = bars.add_task(label, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield bar


@contextmanager
def stage_bars() -> Iterator[Callable[[str, int, int], None]]:
    """Transient bars on stderr, one per stage name: yields ``progress(stage, done, total)``."""
    with progress_bars() as bar:
        bars: dict[str, Progress] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar(stage)
            bars[stage](done, total)

        yield progress


def with_bars(work: Callable[[Callable[[str], Progress]], Any]) -> Any:
    """``work(bar)`` under :func:`progress_bars`; the result is printed after the bars are gone."""
    with progress_bars() as bar:
        return work(bar)


def with_status(label: str, work: Callable[[], Any]) -> Any:
    """``work()`` under a spinner with ``label``; the result is printed after the spinner is gone."""
    with console.status(label):
        return work()


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


class RichTrainProgress:
    """Live progress bar with the running losses, one table row per epoch, and a bar for each evaluation's
    decoding in the same display (``decoding``)."""

    def __init__(self) -> None:
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
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
        self.task = self.bar.add_task(f"epoch {start_epoch + 1}", total=batches_per_epoch, losses="")

    def step(self, epoch, batch, losses) -> None:
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        self.bar.update(self.task, completed=batch + 1, description=f"epoch {epoch + 1}", losses=text)

    def decoding(self, label: str) -> Progress:
        """A bar for one evaluation's decoding, removed when it completes (``nesfgen results`` decodes dozens).

        A fitted evaluation counts its fit's steps, then its decoded structures: the bar comes back for the second.
        """
        self.bar.start()  # a no-op when training already started it
        task = self.bar.add_task(label, total=None, losses="")

        def update(done: int, total: int) -> None:
            nonlocal task
            if done < total:
                if task is None:
                    task = self.bar.add_task(label, total=total, losses="")
                self.bar.update(task, completed=done, total=total)
            elif task is not None:
                self.bar.remove_task(task)
                task = None

        return update

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


@contextmanager
def training_bars(shown: bool = True) -> Iterator[RichTrainProgress | None]:
    """A :class:`RichTrainProgress` (None when not ``shown``), stopped however the block ends."""
    progress = RichTrainProgress() if shown else None
    try:
        yield progress
    finally:
        if progress:
            progress.stop()


def training_report(report: dict) -> None:
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


@contextmanager
def tune_status(
    shown: bool, study: Any, n_trials: int | None, storage: str | None
) -> Iterator[RichTuneProgress | None]:
    """The study's header, then a :class:`RichTuneProgress` status line (None when not ``shown``) until the block ends."""
    if not shown:
        yield None
        return
    study_header(study, n_trials, storage)
    progress = RichTuneProgress()
    progress.status.start()
    try:
        yield progress
    finally:
        progress.status.stop()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def leaderboard(result: dict, limit: int) -> None:
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


def relaxation(r: dict) -> None:
    from nesfgen.stability import METASTABLE  # loaded already: the relaxation that made ``r`` used it

    table = Table(title=f"{r['n']} structures relaxed with {r['potential']} (fmax {r['fmax']:g} eV/Å)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rmsd = "n/a" if r["mean_rmsd"] is None else f"{r['mean_rmsd']:.3f} Å"
    rows = [
        ("relaxed / failed", f"{r['relaxed']} / {r['failed']}"),
        ("converged (of the relaxed)", pct(r["converged_pct"])),
        ("mean RMSD, input to relaxed", rmsd),
        (f"stable, E_hull <= 0 ({r['hull_source'] or 'no hull'})", pct(r["stable_pct"])),
        (f"metastable, E_hull <= {METASTABLE:g} eV/atom", pct(r["metastable_pct"])),
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


def interpolation(summary: dict) -> None:
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


def recipes(rows: list[dict]) -> None:
    table = Table(title="recipes (nesfgen train recipe=NAME)")
    for column in ("name", "dataset", "epochs", "about"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("name", "dataset", "epochs", "about")))
    stdout.print(table)


def imported(result: list[dict]) -> None:
    for entry in result:
        counts = ", ".join(f"{split} {n}" for split, n in entry["imported"].items())
        done = "[green]kept[/] (already imported, identical)" if entry["unchanged"] else "[green]imported[/]"
        stdout.print(f"{done} {escape(entry['name'])} -> {escape(str(entry['path']))} ({counts})")
        for skipped in entry["skipped"]:
            stdout.print(f"  [yellow]skipped[/] {escape(str(skipped['entry']))}: {escape(str(skipped['reason']))}")


def dataset_info(info: dict) -> None:
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


def fetched(result: dict) -> None:
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


def trained(s: dict) -> None:
    from nesfgen.refit import describe_refit

    stdout.print(
        f"[green]done[/] ({s['stop_reason']}): {s['epochs']} epochs in {s['seconds']} s, best validation loss "
        f"{s['best_val_loss']:.4f} at epoch {s['best_epoch']}; checkpoints in {s['run_dir']}"
    )
    if s["lattice_refit"]:
        stdout.print(describe_refit(s["lattice_refit"]), markup=False)
    if "report" in s:
        training_report(s["report"])
    stdout.print(f"next: nesfgen evaluate checkpoint={s['run_dir']} data={s['dataset']} split=test", markup=False)


def evaluation(result: dict) -> None:
    from nesfgen.evaluate import AGGREGATION_NOTE, latents_note, markdown_table, recovery_key, symmetry_markdown

    if note := latents_note(result["each"][0] if "runs" in result else result):
        stdout.print(note.strip(), markup=False)
    if "runs" in result:
        stdout.print(f"mean ± std over {result['runs']} runs")
        first = result["each"][0]
        mean = {**result["mean"], "dataset": first["dataset"], "split": first["split"]}
        stdout.print(markdown_table(mean, result["std"]), markup=False)
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


def reconstruction(r: dict) -> None:
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


def symmetry(r: dict) -> None:
    from nesfgen.symmetry import STATED_SYMPREC

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


def samples(r: dict) -> None:
    from nesfgen.generative_metrics import STRUCTURE_CUTOFF  # loaded already: the scoring of ``r`` used it

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
        (f"structural validity (no atoms < {STRUCTURE_CUTOFF:g} Å)", lambda c: pct(c["structural_validity_pct"])),
        ("compositional validity (SMACT)", lambda c: pct(c["compositional_validity_pct"])),
        ("  the training split's (SMACT)", lambda c: pct(c["train_compositional_validity_pct"])),
        ("both", lambda c: pct(c["validity_pct"])),
        (
            f"COV-R / COV-P (vs {held_out} split)",
            lambda c: f"{pct(c['cov_recall_pct'])} / {pct(c['cov_precision_pct'])}",
        ),
        (
            "  COV-P's halves: near in structure / in composition",
            lambda c: f"{pct(c.get('cov_precision_structure_pct'))} / {pct(c.get('cov_precision_composition_pct'))}",
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
            relaxation(relaxed)


def prior_fit(r: dict) -> None:
    stdout.print(
        f"fitted a {r['config']['kind']} prior on {r['structures']} latents of {r['dataset']}: loss {r['final_loss']:.4f} "
        f"after {r['steps']} steps in {r['seconds']:.0f} s; wrote {r['out']}",
        markup=False,
    )


def prior_check(r: dict) -> None:
    stdout.print(
        f"{r['n']} samples against {r['dataset']}: coverage of {r['split']} {r['coverage']:.3f}, precision "
        f"{r['precision']:.3f} ({r['split']}'s own: {r['held_out_precision']:.3f}), std ratio {r['std_ratio']:.3f}",
        markup=False,
    )


def packaged(result: dict) -> None:
    from nesfgen.evaluate import markdown_table

    stdout.print(markdown_table(result), markup=False)
    stdout.print(f"wrote {result['checkpoint']} and its card {result['card']}", markup=False)


def tuned(r: dict) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in r["trials"].items())
    stdout.print(f"[green]done[/]: study {escape(r['study'])} holds {counts} trials; this worker ran {len(r['ran'])}")
    for row in r["best"][:1]:
        values = ", ".join(f"{v:.5g}" for v in row["values"])
        stdout.print(f"best: trial {row['number']} ({values}) {row['params']}", highlight=False, markup=False)
    stdout.print(
        f"next: nesfgen tune study={r['study']} show; nesfgen tune study={r['study']} export",
        highlight=False,
    )


def bench_train(r: dict) -> None:
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["step_share"].items())
    stdout.print(
        f"{r['recipe']} on {r['device']} ({r['precision']}, batch {r['batch_size']}): "
        f"{r['queries_per_second']:,.0f} queries/s, {r['structures_per_second']:.1f} structures/s, "
        f"{r['seconds_per_step']:.3f} s/step ({shares}); ~{r['epoch_seconds_estimate']:.0f} s per epoch\n"
        f"matmul FLOP rate {r['achieved_gflops']:.1f} GFLOP/s = {r['fraction_of_matmul']:.2g} × this machine's dense "
        f"{r['precision']} matmul (median {r['matmul_gflops']:.1f} GFLOP/s, "
        f"{r['matmul_gflops_range'][0]:.0f}-{r['matmul_gflops_range'][1]:.0f} between the steps)"
    )


def bench_estimate(r: dict) -> None:
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


def exported(r: dict) -> None:
    stdout.print(f"wrote {r['written']} CIF files to {r['out']}", markup=False)


def hull(r: dict) -> None:
    stdout.print(
        f"hull of {r['dataset']} ({r['split']}, {r['structures']} structures, "
        f"{'relaxed' if r['relaxed'] else 'single point'}) and {len(r['elements'])} elemental references "
        f"with {r['potential']} in {r['seconds']:.0f} s",
        markup=False,
    )


def markdown_report(r: dict) -> None:
    """A command's Markdown report (cv, results) and the files it wrote."""
    stdout.print(r["report"], markup=False)
    stdout.print(f"written: {', '.join(r['files'])}", markup=False)


def exported_trial(r: dict) -> None:
    stdout.print(f"wrote trial {r['trial']} as {r['path']}\nnext: nesfgen train recipe={r['path']}", highlight=False)


def embedded(r: dict) -> None:
    stdout.print(
        f"wrote {r['structures']} latents ({r['latent_size']} dimensions) of {r['dataset']} / {r['split']} to "
        f"{r['out']}\nnext: nesfgen map {r['out']}",
        highlight=False,
    )


def mapped(r: dict) -> None:
    stdout.print(f"{r['method']} map of {r['structures']} latents: " + ", ".join(r["files"]), markup=False)


def error_line(label: str, message: str) -> None:
    """One message on stderr, printed as plain text: brackets in it are data (arrays, paths), not markup."""
    from rich.text import Text

    console.print(Text.assemble((label, "red"), " ", message), highlight=False, soft_wrap=True)


def interrupted(hint: str) -> None:
    """What an interrupted command kept and how to continue it."""
    from rich.text import Text

    console.print(
        Text.assemble(("interrupted", "yellow"), f": {hint}" if hint else ""), highlight=False, soft_wrap=True
    )


def study_header(spec: Any, n_trials: int | None, storage: str | None) -> None:
    """The study about to run: objectives, trials, recipe and (redacted) storage."""
    from nesfgen.tune import redact, storage_url

    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives)
    console.print(
        f"[bold]study {escape(spec.name)}[/]: {objectives}, "
        + escape(
            f"{n_trials or spec.n_trials} trials of recipe {spec.recipe.name}, "
            f"storage {redact(storage_url(spec, storage))}"
        ),
        highlight=False,
    )


def failure(error: BaseException, interrupted_code: int) -> int:
    """Show why a command failed and return its exit status: 2 for a user's mistake (a UserError, a usage
    error, a full disk or read-only folder), ``interrupted_code`` for Ctrl-C, 1 (with the trace) for a bug."""
    import typer

    from nesfgen.errors import UserError
    from nesfgen.files import OS_ERROR_REASONS, os_error_reason

    try:
        from click.exceptions import ClickException
    except ImportError:  # newer typer releases vendor click instead of depending on it
        from typer._click.exceptions import ClickException

    if isinstance(error, UserError):
        error_line("error:", str(error))
        return 2
    if isinstance(error, (KeyboardInterrupt, typer.Abort)):
        return interrupted_code
    if isinstance(error, ClickException):
        error.show()
        return 2
    if isinstance(error, OSError) and error.errno in OS_ERROR_REASONS:
        where = f"{error.filename}: " if error.filename else ""
        error_line("error:", f"{where}{os_error_reason(error)}")
        return 2
    console.print_exception()
    error_line("internal error:", "this is a bug in nesfgen; please report it with the trace above")
    return 1
