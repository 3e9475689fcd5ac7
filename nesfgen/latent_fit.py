"""Latents fitted to their own structures: the encoder's latent refined by gradient steps (semi-amortised encoding).

The encoder maps a structure to its latent in one pass, and on crowded cells that latent can miss an atom the
field would draw from a nearby latent (the amortisation gap, docs/large-cells.md). When the structure itself is
at hand, as in reconstruction, its latent can be fitted to its own field targets with the decoder frozen.
Sampling has no structure to fit to, and the paper's Table 1 encodes in one pass, so this is an option of
reconstruction, reported apart from the paper's protocol.
"""

from __future__ import annotations

import torch

from nesfgen.checkpoint import TrainedModel
from nesfgen.data.store import CrystalSet
from nesfgen.progress import Progress
from nesfgen.sampling import QuerySampler, TensorSet
from nesfgen.train import loss_terms

#: the loss terms a fit uses by default: all four, so the lattice heads keep reading the fitted latent
ALL_TERMS = ("position", "species", "length", "angle")


#: structures fitted together: every step holds each one's queries and their activations for the backward pass, so a
#: split is fitted in chunks of this many to bound memory; the paper's splits (286-360 structures) are one chunk
FIT_CHUNK = 512


def fit_latents(
    trained: TrainedModel,
    crystals: CrystalSet,
    latents: torch.Tensor,
    steps: int,
    lr: float = 0.02,
    seed: int = 0,
    terms: tuple[str, ...] = ALL_TERMS,
    progress: Progress | None = None,
    chunk: int = FIT_CHUNK,
) -> torch.Tensor:
    """(S, D) latents fitted to each structure's own training targets, every weight of the model frozen.

    Starting from ``latents`` (the encoder's), Adam at ``lr`` takes ``steps`` steps on the recipe's weighted loss
    ``terms`` over queries drawn as training draws them (eval mode; only the latents move). The structures are
    independent (each latent gets only its own loss's gradient, and Adam scales each coordinate by its own history),
    so they are fitted ``chunk`` at a time, chunk ``k`` with its own Adam and queries drawn from ``seed + k``:
    deterministic given ``seed`` and ``chunk``. ``progress(step, total)`` after each step of each chunk.
    """
    model = trained.model
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    starts = range(0, len(crystals), chunk)
    fitted = []
    try:
        for k, start in enumerate(starts):
            part = crystals if len(starts) == 1 else crystals.subset(range(start, min(start + chunk, len(crystals))))
            z = latents[start : start + len(part)]
            fitted.append(
                _fit_chunk(trained, part, z, steps, lr, seed + k, terms, progress, k * steps, len(starts) * steps)
            )
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return torch.cat(fitted) if fitted else latents.detach().clone()


def _fit_chunk(
    trained: TrainedModel,
    crystals: CrystalSet,
    latents: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
    terms: tuple[str, ...],
    progress: Progress | None,
    steps_before: int,
    steps_in_all: int,
) -> torch.Tensor:
    """One chunk's latents fitted together (the model already frozen and in eval mode)."""
    model, recipe = trained.model, trained.recipe
    device = latents.device
    atoms = TensorSet(crystals, trained.species_table, device).batch(torch.arange(len(crystals), device=device))
    sampler = QuerySampler(recipe.sampling, trained.box, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    weights = {name: getattr(recipe.loss, name) for name in terms}
    z = latents.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    for step in range(steps):
        queries = sampler.sample(atoms, generator)
        losses = loss_terms(model.decode(z, queries), atoms, queries)
        loss = sum(weight * losses[name] for name, weight in weights.items())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(steps_before + step + 1, steps_in_all)
    return z.detach()
