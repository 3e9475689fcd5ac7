"""Checkpoints: one dict holding everything needed to rebuild the model, resume training and decode.

Written to a temporary file and renamed, so a killed run never leaves a half-written checkpoint;
read with ``weights_only=True``, so loading one cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nesfgen import __version__
from nesfgen.config import ModelConfig, Recipe, from_dict
from nesfgen.errors import UserError
from nesfgen.model import NeSF

FORMAT_VERSION = 1
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"
#: The shipped autoencoder that evaluate, reconstruct and the latent tools use when no checkpoint= is given.
DEFAULT_MODEL = "nesf-lcs6"
#: The shipped variational model that ``nesfgen sample`` uses when no checkpoint= is given.
DEFAULT_VAE_MODEL = "nesf-vae-lcs6"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (tensors, plain Python values) with format and package versions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "nesfgen_version": __version__, **state}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    shipped_names = ", ".join(sorted(p.stem for p in PACKAGED_MODELS.glob("*.pt"))) or "none"
    raise UserError(
        f"checkpoint {path_or_run} not found (give a .pt file, a run folder, or a shipped model name: {shipped_names})"
    )


def read_checkpoint(path_or_run: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely.

    Raises:
        UserError: if the file is not a nesfgen checkpoint or is newer than this package.
    """
    path = resolve_checkpoint(path_or_run)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise UserError(f"{path} is not a readable nesfgen checkpoint: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or "model" not in state or "recipe" not in state:
        raise UserError(f"{path} is not a nesfgen checkpoint (no model weights and recipe in it)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer nesfgen (format {state['format_version']}); upgrade nesfgen")
    state["path"] = str(path)
    return state


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, with what the estimator and evaluator need beside it."""

    model: NeSF
    recipe: Recipe
    species_table: list[int]
    box: np.ndarray  # (2, 3) bounding box of the training atoms
    dataset_hash: str
    path: str


def build_model(config: ModelConfig, num_species: int) -> NeSF:
    """A fresh NeSF, or its variational form when ``config.variational`` (Pyro is imported only then)."""
    if config.variational:
        from nesfgen.vae import VariationalNeSF

        return VariationalNeSF(config, num_species)
    return NeSF(config, num_species)


def load_model(path_or_run: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the model of a checkpoint from its saved recipe alone, in eval mode."""
    state = read_checkpoint(path_or_run)
    recipe = from_dict(Recipe, state["recipe"], where=state["path"])
    model = build_model(recipe.model, len(state["species_table"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return TrainedModel(
        model=model,
        recipe=recipe,
        species_table=list(state["species_table"]),
        box=np.asarray(state["box"], dtype=np.float64),
        dataset_hash=state["dataset_hash"],
        path=state["path"],
    )
