"""Shipping a trained run as a package model: a slim checkpoint plus a model card with its evaluation.

The card is written by the same command that evaluates the shipped file, so its figures are the
ones `nesfgen evaluate checkpoint=NAME` reproduces, never numbers copied by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nesfgen.checkpoint import PACKAGED_MODELS, read_checkpoint, save_checkpoint
from nesfgen.config import Recipe, from_dict, load_recipe, to_dict, to_toml
from nesfgen.errors import UserError
from nesfgen.evaluate import (
    AGGREGATION_NOTE,
    EvaluateOptions,
    Evaluation,
    Progress,
    evaluate,
    markdown_table,
    write_report,
)
from nesfgen.files import atomic_write_text, output_folder
from nesfgen.machine import machine_description
from nesfgen.options import required
from nesfgen.refit import describe_refit
from nesfgen.results import seeds_of

#: a shipped model's name: one file name (NAME.pt, NAME.md) inside the package folder, never a path
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: What a shipped model keeps of a training checkpoint: enough to rebuild, decode and describe it.
SHIPPED_KEYS = (
    "recipe",
    "model",
    "species_table",
    "box",
    "atoms_per_cell",
    "dataset_hash",
    "dataset_name",
    "parameters",
)


def training_summary(state: dict[str, Any], run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Epochs, best epoch and wall time of the run a checkpoint comes from (from its saved history).

    ``run``: the run's last.pt, whose epoch count and clock are the whole run's (best.pt stops at the kept epoch).

    A packaged checkpoint has no history but carries this summary; its lattice refit is read from the
    checkpoint itself, so that a shipped model whose heads were refit again is described as it is now.
    """
    if "training" in state and "history" not in state:
        return {
            **state["training"],
            "lattice_refit": state.get("lattice_refit", state["training"].get("lattice_refit")),
        }
    history = state.get("history") or []
    clock = run or state
    return {
        "epochs_run": int(clock.get("epoch", len(history))),
        "best_epoch": int(state.get("best_epoch", -1)) + 1,  # stored from 0, shown from 1 as in the training log
        "best_val_loss": float(state.get("best_val_loss", float("nan"))),
        "training_minutes": round(float(clock.get("seconds", 0.0)) / 60.0, 1),
        "final_lr": history[-1]["lr"] if history else None,
        "parameters": state.get("parameters"),
        "lattice_refit": state.get("lattice_refit"),
    }


def half_matrices(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's and fields' weight matrices as float16, which halves a shipped file; loading casts them back.

    On a 1.9-million-parameter ``fast-lcs6`` model the validation figures moved in the fourth digit at most
    (docs/reproduction.md). The lattice heads stay float32: they are small and always run in float32.
    """
    return {
        name: weight.half()
        if weight.is_floating_point() and weight.ndim >= 2 and not name.startswith("lattice_head.")
        else weight
        for name, weight in weights.items()
    }


@dataclass
class PackagedModel:
    checkpoint: Path
    card: Path
    evaluation: Evaluation


def package_model(options: PackageOptions, progress: Progress | None = None) -> PackagedModel:
    """Write ``out/NAME.pt`` (the run's best weights, no optimizer state) and ``NAME.md``, the model card.

    The card holds the recipe, seed, training time and machine, and the evaluation of the written
    file on ``split`` of ``data`` (default: the training dataset). ``seeds``: a results page's JSON
    (``nesfgen results``) whose table of this recipe's seeds holds this run; the card adds their mean ± std.
    A file of that name holding another model is replaced only with ``force`` (runs fine-tuned from it and
    priors fitted to it then no longer match it).
    """
    from nesfgen.data.names import resolve_dataset

    run_dir, out_dir, name, seeds = Path(options.run), Path(options.out), options.name, options.seeds
    state = read_checkpoint(run_dir)
    recipe = from_dict(Recipe, state["recipe"], where=str(run_dir))
    # everything a user can get wrong is refused before anything is written
    seed_table = seeds_of(Path(seeds), recipe) if seeds else None
    resolve_dataset(options.data or recipe.data.dataset_name).require_split(options.split)
    output_folder(out_dir, "package folder")
    trained_on = run_dir / "machine.json" if run_dir.is_dir() else None
    if trained_on and trained_on.is_file():
        machine = json.loads(trained_on.read_text())
    else:  # a packaged checkpoint says where it was trained; otherwise this machine
        machine = state.get("machine") or machine_description()
    last = run_dir / "last.pt"
    training = training_summary(state, read_checkpoint(last) if run_dir.is_dir() and last.is_file() else None)
    shipped = {key: state[key] for key in SHIPPED_KEYS if key in state}
    shipped["model"] = half_matrices(state["model"])
    shipped.update({"training": training, "machine": machine})
    checkpoint = out_dir / f"{name}.pt"
    if kept := already_shipped(checkpoint, shipped):
        # the same weights, retrained (training is deterministic): rewriting the file for its new clock alone would
        # change its digest and orphan every run fine-tuned from it (train.init_from), so it and its story stay
        training, machine = kept["training"], kept["machine"]
    elif checkpoint.exists() and not options.force:
        raise UserError(
            f"{checkpoint} holds another model (other weights, recipe or data): give force=true to replace it "
            "(runs fine-tuned from it and priors fitted to it will then refuse it), or another name= or out="
        )
    else:
        save_checkpoint(checkpoint, shipped)
    evaluation = evaluate(EvaluateOptions(checkpoint=str(checkpoint), data=options.data, split=options.split), progress)
    card = out_dir / f"{name}.md"
    atomic_write_text(card, model_card(name, recipe, training, machine, evaluation, run_dir, seed_table, seeds))
    if run_dir.is_dir():  # the per-structure report stays with the run, not in the package
        write_report(evaluation, run_dir / f"eval-{name}")
    return PackagedModel(checkpoint, card, evaluation)


def already_shipped(checkpoint: Path, shipped: dict[str, Any]) -> dict[str, Any] | None:
    """The file at ``checkpoint`` if it holds exactly these weights of this recipe and dataset, else None."""
    if not checkpoint.is_file():
        return None
    existing = read_checkpoint(checkpoint)
    weights, theirs = shipped["model"], existing["model"]
    same = (
        existing["recipe"] == shipped["recipe"]
        and existing.get("dataset_hash") == shipped.get("dataset_hash")
        and weights.keys() == theirs.keys()
        and all(weights[k].dtype == theirs[k].dtype and torch.equal(weights[k], theirs[k]) for k in weights)
    )
    return existing if same and "training" in existing else None


#: train settings that say how a run was carried out, which the command to train it again leaves out
HOW_IT_WAS_RUN = ("threads", "device", "time_limit_minutes", "snapshot_every_minutes")


def train_command(recipe: Recipe, run_dir: Path) -> str:
    """The command that trains the run again: its recipe by name and every setting the run changed from it.

    How the run was carried out (threads, device, time limits) is left out; so are overrides of a recipe that is
    no longer shipped under that name, whose whole config the card gives.
    """
    try:
        shipped = to_dict(load_recipe(recipe.name))
    except UserError:
        shipped = {}
    overrides = [
        f"{section}.{key}={_command_word(value)}"
        for section, values in to_dict(recipe).items()
        if isinstance(values, dict) and section in shipped
        for key, value in values.items()
        if not (section == "train" and key in HOW_IT_WAS_RUN) and shipped[section].get(key) != value
    ]
    return " ".join(["nesfgen train", f"recipe={recipe.name}", *overrides, f"out={run_dir}"])


def _command_word(value: Any) -> str:
    """A setting as the command line writes it: lists comma-joined, booleans lower-case."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def model_card(
    name: str,
    recipe: Recipe,
    training: dict[str, Any],
    machine: dict[str, Any],
    evaluation: Evaluation,
    run_dir: Path,
    seed_table: dict[str, Any] | None = None,
    seeds: str | None = None,
) -> str:
    s = evaluation.summary
    hardware = machine["gpu"] or f"{machine['cores']} CPU cores ({machine['cpu']})"
    kind = (
        "variational NeSF (a VAE; evaluation decodes the posterior mean)"
        if recipe.model.variational
        else "NeSF autoencoder"
    )
    lines = [
        f"# Model card: `{name}`",
        "",
        f"A {kind} trained on `{recipe.data.dataset_name}` with the `{recipe.name}` recipe "
        f"(seed {recipe.train.seed}), shipped in the package as `nesfgen/models/{name}.pt`.",
        "",
        "## Training",
        "",
        f"- Command: `{train_command(recipe, run_dir)}`",
        f"- Machine: {hardware}; torch {machine['torch']}, Python {machine['python']}",
        f"- Wall time: {training['training_minutes']} min for {training['epochs_run']} epochs "
        f"(time limit {recipe.train.time_limit_minutes:g} min, epochs planned {recipe.train.epochs}); training on "
        "CPU is deterministic for a seed and thread count, so a rerun gives these weights in its own wall time",
        f"- Kept: epoch {training['best_epoch']}, best validation loss {training['best_val_loss']:.4f} "
        f"(early stopping on the validation split: {'yes' if recipe.train.early_stopping else 'no'})",
        *([f"- {describe_refit(training['lattice_refit'])}"] if training.get("lattice_refit") else []),
        *(
            [f"- Started from: `{recipe.train.init_from}` (train.init_from; its own training time not included)"]
            if recipe.train.init_from
            else []
        ),
        f"- Parameters: {training['parameters']:,}" if training["parameters"] else "- Parameters: n/a",
        "",
        f"## Evaluation: {s['dataset']} / {s['split']} ({s['num_structures']} structures)",
        "",
        "Regenerate this card (and the file) with "
        f"`nesfgen package run={run_dir} name={name}{f' seeds={seeds}' if seeds else ''}`; check the figures with "
        f"`nesfgen evaluate checkpoint={name} data={s['dataset']} split={s['split']}`.",
        "",
        markdown_table(s),
        AGGREGATION_NOTE,
        "",
        f"Empty decodes: {s['empty_decodes']}. StructureMatcher match rate {s['cdvae_match_rate_pct']:.2f} %, "
        f"RMSE {s['cdvae_rmse']:.4f}; space group recovered {s['cdvae_spacegroup_match_pct']:.2f} %.",
        "",
        "The paper column is Chiba et al. (2023), Table 1: 3200 epochs on a GPU, mean of 10 seeds.",
        "",
        *(seeds_section(seed_table, recipe, seeds) if seed_table and seeds else []),
        "## Recipe",
        "",
        "```toml",
        to_toml(recipe).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def seeds_section(table: dict[str, Any], recipe: Recipe, ledger: str) -> list[str]:
    """The card's mean ± std over the seeds of its recipe, as the results page measured them."""
    runs = [run["seed"] for run in table["seeds"]]
    chosen = table.get("chosen_seed")
    choice = (
        "the seed the page picks on the validation split"
        if chosen == recipe.train.seed
        else f"the page picks seed {chosen} on the validation split"
    )
    return [
        f"## Seeds: `{recipe.name}` trained with {len(runs)} seeds ({', '.join(map(str, runs))})",
        "",
        f"This model is seed {recipe.train.seed}, {choice}. Test split ({table['num_structures']} structures), "
        f"mean ± std over the seeds, from `{ledger}`, which `nesfgen results` writes beside its page "
        "(the page gives its command):",
        "",
        markdown_table({**table["mean"], "dataset": table["dataset"]}, table["std"]),
    ]


@dataclass(frozen=True, kw_only=True)
class PackageOptions:
    """Which run to ship under which name, evaluated on which dataset split, written where."""

    run: str = required("run= is required: nesfgen package run=RUN_DIR name=MODEL_NAME")
    name: str = required("name= is required: nesfgen package run=RUN_DIR name=MODEL_NAME")
    data: str | None = None
    split: str = "test"
    out: str = str(PACKAGED_MODELS)
    seeds: str | None = None  # a results page's JSON: the card adds the mean ± std of the recipe's seeds
    force: bool = False  # replace a file of that name that holds another model

    def __post_init__(self) -> None:
        if not MODEL_NAME.fullmatch(self.name) or self.name.endswith(".pt"):
            raise UserError(
                f"name={self.name!r}: expected a model name of letters, digits, '.', '_' and '-' (not starting with "
                "'.' or '-'), without .pt: it names NAME.pt and NAME.md inside out="
            )
