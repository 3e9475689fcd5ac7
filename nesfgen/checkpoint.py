"""Checkpoints: one dict holding everything needed to rebuild the model, resume training and decode.

Written to a temporary file and renamed, so a killed run never leaves a half-written checkpoint;
read with ``weights_only=True``, so loading one cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nesfgen import __version__
from nesfgen.config import ModelConfig, Recipe, from_dict
from nesfgen.crystal import MAX_ATOMIC_NUMBER
from nesfgen.ensemble import MEMBER_SEPARATOR, NeSFEnsemble
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_bytes, os_error_reason
from nesfgen.machine import resolve_device
from nesfgen.model import NeSF

FORMAT_VERSION = 1
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"
#: The shipped autoencoder that evaluate, reconstruct and the latent tools use when no checkpoint= is given.
DEFAULT_MODEL = "nesf-lcs6"
#: The shipped variational model that ``nesfgen sample`` uses when no checkpoint= is given.
DEFAULT_VAE_MODEL = "nesf-vae-lcs6"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (tensors, plain Python values) with format and package versions.

    Serialised in memory first, so a failed write (a full disk) is an OSError naming its reason, not torch's
    generic stream error; the previous checkpoint stays in place either way.
    """
    payload = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "nesfgen_version": __version__, **state}, payload)
    atomic_write_bytes(path, payload.getbuffer(), "the checkpoint")


def checkpoint_digest(path_or_run: str | Path) -> str:
    """SHA-256 of a checkpoint file's bytes: which starting point a fine-tuned run or a recipe fingerprint means."""
    return hashlib.sha256(resolve_checkpoint(path_or_run).read_bytes()).hexdigest()


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A checkpoint file from a file path, a run folder (its ``best.pt``, else ``last.pt``) or a shipped name."""
    path = Path(path_or_run).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"run folder {path} holds no checkpoint (best.pt or last.pt)")
    if path.is_file():
        return path
    shipped = PACKAGED_MODELS / f"{path_or_run}.pt"
    if shipped.is_file():
        return shipped
    if len(ensemble_members(path_or_run)) > 1:
        raise UserError(f"checkpoint {path_or_run} names an ensemble, which this command does not take; give one run")
    shipped_names = ", ".join(sorted(p.stem for p in PACKAGED_MODELS.glob("*.pt"))) or "none"
    raise UserError(
        f"checkpoint {path_or_run} not found (give a .pt file, a run folder, or a shipped model name: {shipped_names})"
    )


def load_weights_only(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a file nesfgen wrote, every way the file can be wrong a UserError.

    ``what`` names the kind of file in the messages ("checkpoint", "latent prior").
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{what} {path} is empty (0 bytes); it was not written completely")
        if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
            raise UserError(f"{what} {path} is not a PyTorch {what} file (it is cut short or something else)")
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read: {os_error_reason(error)}") from None
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, which would run whatever code the file holds
        raise UserError(
            f"{what} {path} holds objects other than tensors and plain values; nesfgen's files never do, "
            "so it is not loaded"
        ) from None
    except UserError:
        raise
    except Exception as error:  # torch raises many types for corrupt or foreign files
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"{what} {path} is not a readable nesfgen {what}: {reason}") from None


def read_checkpoint(path_or_run: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely and check that it holds what a model is rebuilt from.

    Raises:
        UserError: naming the file and what is wrong: empty, not a checkpoint, written by a newer
            nesfgen, or missing (or holding a malformed) species table, box or dataset hash.
    """
    path = resolve_checkpoint(path_or_run)
    state = load_weights_only(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "recipe" not in state:
        raise UserError(f"{path} is not a nesfgen checkpoint (no model weights and recipe in it)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer nesfgen (format {state['format_version']}); upgrade nesfgen")
    _check_contents(path, state)
    state["path"] = str(path)
    return state


def _check_contents(path: Path, state: dict[str, Any]) -> None:
    """The parts beside the weights that decoding relies on: species table, box, dataset hash, atom range."""
    table = state.get("species_table")
    if not (
        isinstance(table, (list, tuple))
        and table
        and all(isinstance(z, int) and 1 <= z <= MAX_ATOMIC_NUMBER for z in table)
        and len(set(table)) == len(table)
    ):
        raise UserError(f"checkpoint {path} has no valid species_table (distinct atomic numbers 1-{MAX_ATOMIC_NUMBER})")
    box = np.asarray(state.get("box", []), dtype=object)
    try:
        box = box.astype(np.float64)
    except (TypeError, ValueError):
        box = np.empty(0)
    if box.shape != (2, 3) or not np.all(np.isfinite(box)) or np.any(box[0] > box[1]):
        raise UserError(
            f"checkpoint {path} has no valid box (expected [[lo_x, lo_y, lo_z], [hi_x, hi_y, hi_z]], lo <= hi)"
        )
    if not isinstance(state.get("dataset_hash"), str):
        raise UserError(f"checkpoint {path} has no dataset_hash (the content hash of its training data)")
    atoms = state.get("atoms_per_cell")
    if atoms is not None and not (
        isinstance(atoms, (list, tuple))
        and len(atoms) == 2
        and all(isinstance(n, int) for n in atoms)
        and 1 <= atoms[0] <= atoms[1]
    ):
        raise UserError(f"checkpoint {path} has a malformed atoms_per_cell {atoms!r} (expected [fewest, most])")


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, with what the estimator and evaluator need beside it."""

    model: NeSF | NeSFEnsemble
    recipe: Recipe
    species_table: list[int]
    box: np.ndarray  # (2, 3) bounding box of the training atoms
    dataset_hash: str
    path: str
    atoms_per_cell: tuple[int, int] | None = None  # fewest and most atoms per cell in the training split


def build_model(config: ModelConfig, num_species: int) -> NeSF:
    """A fresh NeSF, or its variational form when ``config.variational`` (Pyro is imported only then)."""
    if config.variational:
        from nesfgen.vae import VariationalNeSF

        return VariationalNeSF(config, num_species)
    return NeSF(config, num_species)


def ensemble_members(spec: str | Path) -> list[str]:
    """The checkpoints an ensemble ``A+B`` names; ``[spec]`` for one checkpoint (a path holding a + included)."""
    text = str(spec)
    if MEMBER_SEPARATOR not in text or Path(text).expanduser().exists():
        return [text]
    members = [part.strip() for part in text.split(MEMBER_SEPARATOR)]
    if len(members) < 2 or not all(members):
        raise UserError(
            f"checkpoint {text!r}: an ensemble names two or more checkpoints joined by +, e.g. runs/a+runs/b"
        )
    return members


def load_model(path_or_run: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the model of a checkpoint from its saved recipe alone, in eval mode, on ``device`` (checked first).

    ``A+B`` loads an ensemble (:class:`~nesfgen.ensemble.NeSFEnsemble`): members trained on the same dataset
    with the same species table and box, decoded as one field; the recipe is the first member's, its latent
    size the members' sum.
    """
    device = resolve_device(device, "device") if isinstance(device, str) else device
    members = ensemble_members(path_or_run)
    if len(members) > 1:
        return _load_ensemble([load_model(member, device) for member in members])
    state = read_checkpoint(path_or_run)
    recipe = from_dict(Recipe, state["recipe"], where=state["path"])
    model = build_model(recipe.model, len(state["species_table"]))
    load_weights(model, state["model"], state["path"])
    model.to(device).eval()
    atoms = state.get("atoms_per_cell")
    return TrainedModel(
        model=model,
        recipe=recipe,
        species_table=list(state["species_table"]),
        box=np.asarray(state["box"], dtype=np.float64),
        dataset_hash=state["dataset_hash"],
        path=state["path"],
        atoms_per_cell=tuple(atoms) if atoms else None,
    )


def _load_ensemble(members: list[TrainedModel]) -> TrainedModel:
    """One TrainedModel over ``members``, which must agree on everything decoding reads beside the weights."""
    first = members[0]
    for member in members:
        if member.recipe.model.variational:
            raise UserError(f"checkpoint {member.path} is variational; an ensemble takes autoencoders only")
        if member.species_table != first.species_table:
            raise UserError(f"ensemble: {member.path} has another species table than {first.path}")
        if not np.allclose(member.box, first.box, atol=1e-6):
            raise UserError(f"ensemble: {member.path} has another box than {first.path} (trained on other data?)")
        if member.dataset_hash != first.dataset_hash:
            raise UserError(f"ensemble: {member.path} was trained on another dataset than {first.path}")
    seen: dict[str, str] = {}
    for member in members:
        digest = checkpoint_digest(member.path)
        if digest in seen:
            raise UserError(
                f"ensemble: {member.path} is the same file as {seen[digest]}; an ensemble needs other models"
            )
        seen[digest] = member.path
    ensemble = NeSFEnsemble([member.model for member in members]).eval()
    return TrainedModel(
        model=ensemble,
        recipe=replace(first.recipe, model=ensemble.config),
        species_table=first.species_table,
        box=first.box,
        dataset_hash=first.dataset_hash,
        path=MEMBER_SEPARATOR.join(member.path for member in members),
        atoms_per_cell=first.atoms_per_cell,
    )


def load_weights(model: torch.nn.Module, weights: Any, path: str | Path) -> None:
    """Put checkpoint ``path``'s weights into the model its recipe describes, or say which weight does not fit.

    Raises:
        UserError: naming the checkpoint and the first missing, unexpected or misshapen weight.
    """
    if not isinstance(weights, dict) or not all(isinstance(w, torch.Tensor) for w in weights.values()):
        raise UserError(f"checkpoint {path} holds no model weights (a dict of tensors)")
    expected = model.state_dict()
    problems = [
        f"weight {name} has shape {list(weights[name].shape)}, the recipe's model has {list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    problems += [f"weight {name} is missing" for name in expected if name not in weights]
    problems += [f"weight {name} is not part of the recipe's model" for name in weights if name not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"checkpoint {path} does not fit the model its recipe describes: {problems[0]}{more}")
    model.load_state_dict(weights)
