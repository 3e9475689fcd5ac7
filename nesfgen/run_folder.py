"""A run folder: whether a new run may start in it, where a run in it stands, and whether it is a run of a recipe.

Training, cross-validation and the results page all decide from these whether to train, resume or refuse, so
that a folder holding the user's files or another recipe's run is never overwritten or passed off as this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nesfgen.checkpoint import checkpoint_digest, read_checkpoint
from nesfgen.config import Recipe, from_dict, to_dict
from nesfgen.errors import UserError
from nesfgen.files import output_folder

#: first line of the config.toml a run writes; with RUN_START_FILES it tells a run stopped before its first
#: checkpoint (whose folder a new run may reuse) from a folder of the user's own files
RUN_HEADER = "# nesfgen train recipe="
RUN_START_FILES = {"config.toml", "machine.json", ".config.toml.tmp", ".machine.json.tmp"}


def new_run_dir(recipe_name: str, root: Path = Path("runs")) -> Path:
    """The default run folder: the recipe's name and the time the run starts, under ``runs/``."""
    return root / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run folder in which a new run would overwrite something, before any work starts.

    Accepted: a folder that does not exist yet, an empty one, or one that a run stopped during its first epoch
    left (only nesfgen's config.toml and machine.json). A user's files are never overwritten.

    Raises:
        UserError: for a folder holding a run (resume it instead) or other files, or one that cannot be written.
    """
    output_folder(run_dir, "run folder", create=False)
    if (run_dir / "last.pt").exists():
        raise UserError(
            f"{run_dir} already holds a run; resume it with `nesfgen train resume={run_dir}` or choose another out="
        )
    present = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    config = run_dir / "config.toml"
    unstarted = (
        set(present) <= RUN_START_FILES
        and config.is_file()
        and config.read_text(errors="replace").startswith(RUN_HEADER)
    )
    if present and not unstarted:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise UserError(
            f"{run_dir} already holds files ({shown}) and no run to resume (no last.pt); a new run would overwrite "
            "them: choose a new or empty folder with out="
        )


@dataclass(frozen=True)
class RunStatus:
    """Where a run folder stands: finished or not, epochs done, minutes of training so far."""

    run_dir: Path
    finished: bool
    epochs: int
    minutes: float | None


def run_status(run_dir: Path, epochs: int | None = None) -> RunStatus:
    """Read ``run_dir/last.pt``: finished when ``epochs`` (default: its recipe's) are done or its time limit stopped it."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return RunStatus(run_dir, False, 0, None)
    state = read_checkpoint(last)
    settings = state["recipe"]["train"]
    limit = float(settings.get("time_limit_minutes") or 0)
    seconds = float(state.get("seconds", 0.0))
    done = int(state["epoch"]) >= (epochs or int(settings["epochs"])) or (limit > 0 and seconds >= 60 * limit)
    return RunStatus(run_dir, done and (run_dir / "best.pt").is_file(), int(state["epoch"]), seconds / 60)


#: settings that say how or where a run was carried out, not what it trained: runs of one recipe may differ in them
HOW_IT_RAN = {"train": ("seed", "threads", "device", "time_limit_minutes", "snapshot_every_minutes"), "data": ("fold",)}


def foreign_settings(run_dir: Path, recipe: Recipe) -> list[str]:
    """The settings in which the run in ``run_dir`` differs from ``recipe`` (none for a run of it or no run yet)."""
    if not (run_dir / "last.pt").is_file():
        return []
    state = read_checkpoint(run_dir / "last.pt")
    theirs = to_dict(from_dict(Recipe, state["recipe"], where=str(run_dir)))
    mine = to_dict(recipe)
    differing = [
        f"{section}.{key} = {value!r} there, {mine[section][key]!r} here"
        for section, settings in theirs.items()
        if isinstance(settings, dict)
        for key, value in settings.items()
        if key not in HOW_IT_RAN.get(section, ()) and value != mine[section][key]
    ]
    if recipe.train.init_from and state.get("init_digest") != checkpoint_digest(recipe.train.init_from):
        started = "another checkpoint than" if state.get("init_digest") else "maybe not the checkpoint (unrecorded)"
        differing.append(f"train.init_from = {recipe.train.init_from!r} is {started} the run started from")
    return differing


def check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse a folder that holds a run of another recipe, which resuming or evaluating would pass off as this one."""
    if differing := foreign_settings(run_dir, recipe):
        raise UserError(
            f"{run_dir} holds a run of another recipe than {recipe.name!r} ({'; '.join(differing[:4])}"
            f"{'; ...' if len(differing) > 4 else ''}); move it away or give another runs folder"
        )


def resume_hint(run_dir: Path) -> str:
    """What an interrupted training kept and how to continue it."""
    if (run_dir / "last.pt").is_file():
        return f"the last finished epoch is saved; continue with: nesfgen train resume={run_dir}"
    return f"no epoch had finished, so {run_dir} holds nothing to resume; run the command again"
