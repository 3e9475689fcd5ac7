"""A learned prior over an autoencoder's latents, so that samples decode as well as the autoencoder's own.

Two kinds, fitted to the eval-mode latents of the training split (standardised per dimension):
- ``flow``: a Pyro normalizing flow, spline coupling layers with fixed random permutations between them;
- ``flowmatch``: a flow-matching model, an MLP velocity field integrated from N(0, I) to the latents.
  It takes a condition vector (elements present, composition, atoms per cell, crystal system, space
  group), each part with a flag saying whether it is given; parts are dropped at random in training,
  so one model samples unconditionally or under any subset of conditions, with classifier-free guidance.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nesfgen import symmetry
from nesfgen.crystal import formula_unit, parse_formula
from nesfgen.errors import UserError, require
from nesfgen.files import atomic_write_bytes, output_folder
from nesfgen.options import comma_list, required
from nesfgen.progress import Progress

log = logging.getLogger(__name__)


PRIOR_FORMAT = "nesfgen-latent-prior"
PRIOR_FORMAT_VERSION = 2  # 2: the autoencoder named by its checkpoint digest
PRIOR_KINDS = ("flow", "flowmatch")
#: crystal systems in the order of their space-group numbers: the order of the condition's one-hot part
CRYSTAL_SYSTEMS = tuple(name for _, name in reversed(symmetry.CRYSTAL_SYSTEMS))
#: atoms per cell are given to the model divided by this
ATOMS_SCALE = 20.0


@dataclass(frozen=True)
class PriorConfig:
    kind: str = "flowmatch"
    hidden: int = 512  # width of the MLPs
    layers: int = 3  # flow: coupling layers; flowmatch: hidden layers of the velocity MLP
    count_bins: int = 8  # flow: spline bins
    bound: float = 5.0  # flow: the splines act on [-bound, bound] (standardised latents)
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    condition_dropout: float = 0.5  # flowmatch: chance that each condition part is hidden in training
    unconditional_share: float = 0.2  # flowmatch: share of training rows with every part hidden
    ode_steps: int = 50  # flowmatch: midpoint steps from noise to latent
    threads: int = 2

    def __post_init__(self) -> None:
        """Settings that would fit nothing (``steps=0`` wrote a prior of NaN loss) are refused by name."""
        for key in ("hidden", "layers", "count_bins", "steps", "batch_size", "ode_steps", "threads"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)}: expected a whole number of at least 1")
        for key in ("bound", "lr"):
            if not getattr(self, key) > 0:
                raise UserError(f"{key}={getattr(self, key)}: expected a positive number")
        if not self.weight_decay >= 0:
            raise UserError(f"weight_decay={self.weight_decay}: expected 0 or a positive number")
        for key in ("condition_dropout", "unconditional_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise UserError(f"{key}={getattr(self, key)}: expected a number from 0 to 1")


# --- conditions ------------------------------------------------------------------------------------


def crystal_system_index(number: int) -> int:
    """Index in CRYSTAL_SYSTEMS of a space-group number (1-230)."""
    return CRYSTAL_SYSTEMS.index(symmetry.crystal_system(number))


@dataclass(frozen=True)
class Condition:
    """What a sample should hold; None means not asked for.

    elements: exactly these atomic numbers. composition: atomic number -> fraction (a formula).
    """

    elements: tuple[int, ...] | None = None
    composition: Mapping[int, float] | None = None
    num_atoms: int | None = None
    crystal_system: str | None = None
    spacegroup: int | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in asdict(self).values())

    def fewest_atoms(self) -> int | None:
        """The fewest atoms a cell of the asked composition holds (Zn2S2O99: 103; ZnS: 2), None without one."""
        unit = formula_unit(self.composition) if self.composition is not None else None
        return sum(unit.values()) if unit else None


@dataclass(frozen=True)
class ConditionEncoder:
    """Turns Conditions into vectors: per part, its values and a given/not-given flag."""

    species_table: tuple[int, ...]

    @property
    def parts(self) -> dict[str, int]:
        """Part name -> width (without its flag)."""
        species = len(self.species_table)
        return {"elements": species, "composition": species, "num_atoms": 1, "crystal_system": 7, "spacegroup": 230}

    @property
    def size(self) -> int:
        return sum(width + 1 for width in self.parts.values())

    def check(self, condition: Condition) -> None:
        """Raises a UserError for elements the model does not know or values out of range."""
        asked = set(condition.elements or ()) | set((condition.composition or {}).keys())
        unknown = sorted(asked - set(self.species_table))
        if unknown:
            from pymatgen.core import Element

            names = ", ".join(Element.from_Z(z).symbol for z in unknown)
            raise UserError(f"condition: {names} not among the elements the model was trained on")
        if condition.crystal_system is not None and condition.crystal_system not in CRYSTAL_SYSTEMS:
            raise UserError(f"crystal_system={condition.crystal_system}: expected one of {', '.join(CRYSTAL_SYSTEMS)}")
        if condition.spacegroup is not None and not 1 <= condition.spacegroup <= 230:
            raise UserError(f"spacegroup={condition.spacegroup}: expected a number from 1 to 230")
        if condition.num_atoms is not None and condition.num_atoms < 1:
            raise UserError(f"num_atoms={condition.num_atoms}: expected a positive number")

    def encode(self, condition: Condition) -> Tensor:
        """(C,) the condition vector."""
        index = {z: i for i, z in enumerate(self.species_table)}
        values: dict[str, np.ndarray | None] = dict.fromkeys(self.parts)
        if condition.elements is not None:
            values["elements"] = np.zeros(len(index))
            values["elements"][[index[z] for z in condition.elements]] = 1.0
        if condition.composition is not None:
            values["composition"] = np.zeros(len(index))
            total = sum(condition.composition.values())
            for z, amount in condition.composition.items():
                values["composition"][index[z]] = amount / total
        if condition.num_atoms is not None:
            values["num_atoms"] = np.array([condition.num_atoms / ATOMS_SCALE])
        if condition.crystal_system is not None:
            values["crystal_system"] = np.eye(7)[CRYSTAL_SYSTEMS.index(condition.crystal_system)]
        if condition.spacegroup is not None:
            values["spacegroup"] = np.eye(230)[condition.spacegroup - 1]
        pieces = []
        for name, width in self.parts.items():
            given = values[name] is not None
            pieces.append(values[name] if given else np.zeros(width))
            pieces.append(np.array([float(given)]))
        return torch.tensor(np.concatenate(pieces), dtype=torch.float32)

    def describe(self, atomic_numbers: np.ndarray, space_group_number: int) -> Condition:
        """The full condition a structure meets (what training conditions on)."""
        numbers, counts = np.unique(atomic_numbers, return_counts=True)
        return Condition(
            elements=tuple(int(z) for z in numbers),
            composition={int(z): float(c) for z, c in zip(numbers, counts)},
            num_atoms=len(atomic_numbers),
            crystal_system=symmetry.crystal_system(space_group_number) if space_group_number else None,
            spacegroup=space_group_number or None,
        )

    def drop(self, vectors: Tensor, probability: float, generator: torch.Generator, everything: float = 0.0) -> Tensor:
        """(B, C) with each part of each row hidden (zeros, flag 0) with ``probability``, and whole rows
        with ``everything``: part-wise dropout alone leaves the unconditional case (what plain sampling and
        guidance ask) to 0.5⁵ ≈ 3 % of the rows."""
        out = vectors.clone()
        out[torch.rand(len(out), generator=generator) < everything] = 0.0
        start = 0
        for width in self.parts.values():
            hidden = torch.rand(len(out), generator=generator) < probability
            out[hidden, start : start + width + 1] = 0.0
            start += width + 1
        return out


def parse_condition(
    elements: str | None = None,
    formula: str | None = None,
    num_atoms: int | None = None,
    crystal_system_name: str | None = None,
    spacegroup: int | None = None,
) -> Condition:
    """A Condition from the command line's text: ``elements=Zn,S``, ``formula=ZnS``, ..."""
    from pymatgen.core import Element

    numbers = None
    if elements is not None:
        try:
            numbers = tuple(sorted({Element(symbol).Z for symbol in comma_list(elements)}))
        except ValueError as error:
            raise UserError(f"elements={elements}: expected element symbols separated by commas, e.g. Zn,S") from error
    composition = None
    if formula is not None:
        composition = parse_formula(formula)
        if composition is None:
            raise UserError(f"formula={formula}: not a chemical formula of elements (e.g. ZnS, SrTiO3)")
    system = crystal_system_name.lower() if crystal_system_name is not None else None
    condition = Condition(numbers, composition, num_atoms, system, spacegroup)
    _refuse_contradiction(condition, elements, formula)
    return condition


def _refuse_contradiction(condition: Condition, elements: str | None, formula: str | None) -> None:
    """Conditions no structure can meet together, refused by name before anything is sampled."""
    if condition.elements is not None and condition.composition is not None:
        if set(condition.elements) != set(condition.composition):
            raise UserError(
                f"elements={elements} and formula={formula} name different elements; no structure holds both"
            )
    fewest = condition.fewest_atoms()
    if fewest is not None and condition.num_atoms is not None and condition.num_atoms % fewest:
        raise UserError(
            f"num_atoms={condition.num_atoms} and formula={formula}: a cell of that composition holds a multiple of "
            f"{fewest} atoms"
        )
    if condition.spacegroup is not None and condition.crystal_system is not None and 1 <= condition.spacegroup <= 230:
        if (system := symmetry.crystal_system(condition.spacegroup)) != condition.crystal_system:
            raise UserError(
                f"spacegroup={condition.spacegroup} is {system}, not crystal_system={condition.crystal_system}; "
                "give one of them"
            )


def condition_holds(condition: Condition, atomic_numbers: np.ndarray, space_group_number: int) -> dict[str, bool]:
    """Per asked-for part of ``condition``: whether a decoded structure holds it."""
    numbers, counts = np.unique(atomic_numbers, return_counts=True)
    held: dict[str, bool] = {}
    if condition.elements is not None:
        held["elements"] = set(numbers.tolist()) == set(condition.elements)
    if condition.composition is not None:
        wanted = condition.composition
        total = sum(wanted.values())
        held["composition"] = set(numbers.tolist()) == set(wanted) and all(
            math.isclose(c / len(atomic_numbers), wanted[int(z)] / total, abs_tol=1e-6) for z, c in zip(numbers, counts)
        )
    if condition.num_atoms is not None:
        held["num_atoms"] = len(atomic_numbers) == condition.num_atoms
    if condition.crystal_system is not None:
        held["crystal_system"] = bool(space_group_number) and (
            symmetry.crystal_system(space_group_number) == condition.crystal_system
        )
    if condition.spacegroup is not None:
        held["spacegroup"] = space_group_number == condition.spacegroup
    return held


#: the parts of a condition ``draw_conditions`` can take from a structure
DRAWABLE_PARTS = ("elements", "composition", "num_atoms", "crystal_system", "spacegroup")


def parse_draw(text: str | None) -> tuple[str, ...]:
    """``draw=composition,num_atoms`` -> ("composition", "num_atoms"); "none", "" or None -> ()."""
    if (text or "").strip().lower() == "none":
        return ()
    parts = tuple(comma_list(text))
    unknown = [part for part in parts if part not in DRAWABLE_PARTS]
    if unknown:
        raise UserError(
            f"draw={text}: {unknown[0]} is not a condition part; expected some of {', '.join(DRAWABLE_PARTS)}"
        )
    return parts


def draw_conditions(crystals: Any, parts: Sequence[str], count: int, seed: int) -> list[Condition]:
    """One condition per sample: ``parts`` of a structure of ``crystals`` (a CrystalSet) drawn at random, with
    replacement. Sampling under them is ancestral sampling, p(condition) × p(latent | condition), with the
    training split's empirical distribution of, say, compositions as p(condition)."""
    from nesfgen.symmetry import space_group_number

    picks = np.random.default_rng(seed).integers(len(crystals), size=count)
    needs_group = "crystal_system" in parts or "spacegroup" in parts
    drawn = []
    for index in picks.tolist():
        crystal = crystals[index]
        group = space_group_number(crystal) if needs_group else 0
        described = ConditionEncoder(()).describe(crystal.atomic_numbers, group)
        drawn.append(Condition(**{part: getattr(described, part) for part in parts}))
    return drawn


# --- the two models ------------------------------------------------------------------------------


class SplineFlow(nn.Module):
    """A Pyro normalizing flow N(0, I) -> latents: spline couplings with random permutations between."""

    def __init__(self, size: int, config: PriorConfig, permutations: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        from pyro.distributions import transforms as T

        generator = torch.Generator().manual_seed(config.seed)
        if permutations is None:
            permutations = [torch.randperm(size, generator=generator).tolist() for _ in range(config.layers)]
        self.permutations = [list(p) for p in permutations]
        self.couplings = nn.ModuleList(
            T.spline_coupling(
                size, hidden_dims=[config.hidden, config.hidden], count_bins=config.count_bins, bound=config.bound
            )
            for _ in range(config.layers)
        )
        chain = []
        for coupling, permutation in zip(self.couplings, self.permutations):
            chain += [coupling, T.Permute(torch.tensor(permutation))]
        self.transforms = chain
        self.size = size

    def distribution(self) -> Any:
        import pyro.distributions as dist

        base = dist.Normal(torch.zeros(self.size), torch.ones(self.size)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms)

    def loss(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        return -self.distribution().log_prob(x).mean()

    @torch.no_grad()
    def sample(
        self,
        count: int,
        generator: torch.Generator,
        condition: Tensor | None = None,
        temperature: float = 1.0,
        **_: Any,
    ) -> Tensor:
        x = temperature * torch.randn(count, self.size, generator=generator)
        for transform in self.transforms:
            x = transform(x)
        return x


class FlowMatching(nn.Module):
    """A conditional velocity field v(x_t, t, c) whose ODE carries N(0, I) to the latents (rectified flow)."""

    def __init__(self, size: int, condition_size: int, config: PriorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = size + 1 + condition_size
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, size))
        self.net = nn.Sequential(*layers)
        self.size = size
        self.condition_size = condition_size
        self.ode_steps = config.ode_steps

    def velocity(self, x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([x, t[:, None], condition], dim=1))  # (B, D)

    def loss(self, x: Tensor, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(x.shape, generator=generator)
        t = torch.rand(len(x), generator=generator)
        x_t = (1 - t[:, None]) * noise + t[:, None] * x
        return (self.velocity(x_t, t, condition) - (x - noise)).square().sum(dim=1).mean()

    @torch.no_grad()
    def sample(
        self,
        count: int,
        generator: torch.Generator,
        condition: Tensor | None = None,
        guidance: float = 1.0,
        temperature: float = 1.0,
    ) -> Tensor:
        """Midpoint integration from temperature × N(0, I); with a condition, v = v(∅) + guidance × (v(c) − v(∅))."""
        unconditional = torch.zeros(count, self.condition_size)
        given = condition is not None and bool(condition.any())
        conditional = condition.expand(count, -1) if given else unconditional

        def field(x: Tensor, t: float) -> Tensor:
            times = torch.full((count,), t)
            v = self.velocity(x, times, conditional)
            if given and guidance != 1.0:
                v0 = self.velocity(x, times, unconditional)
                v = v0 + guidance * (v - v0)
            return v

        x = temperature * torch.randn(count, self.size, generator=generator)
        dt = 1.0 / self.ode_steps
        for step in range(self.ode_steps):
            t = step * dt
            x = x + dt * field(x + 0.5 * dt * field(x, t), t + 0.5 * dt)
        return x


# --- the prior: fit, save, load, sample ------------------------------------------------------------


@dataclass
class LatentPrior:
    """A fitted prior and what it needs to give latents in the autoencoder's units."""

    config: PriorConfig
    model: nn.Module
    mean: Tensor  # (D,) of the training latents
    std: Tensor  # (D,)
    conditions: ConditionEncoder
    autoencoder: str = ""  # the model whose latents these are (shipped name or path)
    autoencoder_digest: str = ""  # SHA-256 of its checkpoint file: another model reads these latents differently
    history: dict[str, Any] = field(default_factory=dict)

    def sample(
        self,
        count: int,
        seed: int,
        condition: Condition | Sequence[Condition] | None = None,
        guidance: float = 1.0,
        temperature: float = 1.0,
    ) -> Tensor:
        """(count, D) latents, deterministic for a seed, under one condition for all or one per sample. A
        temperature below 1 starts from narrower noise: samples nearer the data's typical latents, at some
        cost in diversity."""
        each = [condition or Condition()] if condition is None or isinstance(condition, Condition) else condition
        if len(each) not in (1, count):
            raise ValueError(f"{len(each)} conditions for {count} samples")
        vector = None
        if any(not c.is_empty() for c in each):
            if self.config.kind != "flowmatch":
                raise UserError(f"conditions need prior=flowmatch; the {self.config.kind} prior is unconditional")
            for c in each:
                self.conditions.check(c)
            vector = torch.stack([self.conditions.encode(c) for c in each])
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        z = self.model.sample(count, generator, vector, guidance=guidance, temperature=temperature)
        return z * self.std + self.mean

    def state(self) -> dict[str, Any]:
        model = self.model
        return {
            "format": PRIOR_FORMAT,
            "format_version": PRIOR_FORMAT_VERSION,
            "config": asdict(self.config),
            "size": int(self.mean.numel()),
            "species_table": list(self.conditions.species_table),
            "permutations": getattr(model, "permutations", None),
            "model": model.state_dict(),
            "mean": self.mean,
            "std": self.std,
            "autoencoder": self.autoencoder,
            "autoencoder_digest": self.autoencoder_digest,
            "history": self.history,
        }


def build_model(config: PriorConfig, size: int, conditions: ConditionEncoder, permutations: Any = None) -> nn.Module:
    if config.kind == "flow":
        return SplineFlow(size, config, permutations)
    if config.kind == "flowmatch":
        return FlowMatching(size, conditions.size, config)
    raise UserError(f"prior kind {config.kind!r}: expected one of {', '.join(PRIOR_KINDS)}")


def fit_prior(
    latents: Tensor,
    config: PriorConfig,
    species_table: Sequence[int],
    conditions: Sequence[Condition] | None = None,
    progress: Progress | None = None,
) -> LatentPrior:
    """Fit a prior to (S, D) latents; ``conditions`` (one per latent) are what the flow-matching model learns.

    Without conditions the flow-matching model is trained with every part hidden (unconditional).
    """
    if config.kind not in PRIOR_KINDS:
        raise UserError(f"kind={config.kind}: expected one of {', '.join(PRIOR_KINDS)}")
    if len(latents) < 2:
        raise UserError(f"a prior needs at least 2 latents to fit, got {len(latents)}")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    encoder = ConditionEncoder(tuple(int(z) for z in species_table))
    mean, std = latents.mean(dim=0), latents.std(dim=0).clamp_min(1e-6)
    x = ((latents - mean) / std).float()
    if conditions is None:
        vectors = torch.zeros(len(x), encoder.size)
    else:
        vectors = torch.stack([encoder.encode(c) for c in conditions])
    model = build_model(config, x.shape[1], encoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    losses, started = [], time.perf_counter()
    model.train()
    for step in range(config.steps):
        batch = torch.randint(len(x), (min(config.batch_size, len(x)),), generator=generator)
        if isinstance(model, FlowMatching):
            given = encoder.drop(vectors[batch], config.condition_dropout, generator, config.unconditional_share)
            loss = model.loss(x[batch], given, generator)
        else:
            loss = model.loss(x[batch])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, config.steps)
    tail = losses[-max(1, len(losses) // 20) :]
    history = {"steps": config.steps, "final_loss": float(np.mean(tail)), "seconds": time.perf_counter() - started}
    log.info("fitted a %s prior: loss %.4f in %.0f s", config.kind, history["final_loss"], history["seconds"])
    return LatentPrior(config, model, mean, std, encoder, history=history)


def save_prior(prior: LatentPrior, path: Path) -> Path:
    payload = io.BytesIO()
    torch.save(prior.state(), payload)
    return atomic_write_bytes(path, payload.getbuffer(), "the latent prior")


def load_prior(path: Path) -> LatentPrior:
    """A prior saved by save_prior, loaded with weights_only=True and rebuilt from its saved config."""
    from nesfgen.checkpoint import load_weights_only  # the checkpoint module pulls in the whole model

    state = load_weights_only(Path(path), "latent prior")
    if not isinstance(state, dict) or state.get("format") != PRIOR_FORMAT:
        raise UserError(f"prior={path}: not a nesfgen latent prior (format {PRIOR_FORMAT})")
    try:
        config = PriorConfig(**state["config"])
        encoder = ConditionEncoder(tuple(state["species_table"]))
        model = build_model(config, state["size"], encoder, state["permutations"])
        model.load_state_dict(state["model"])
        return LatentPrior(
            config,
            model,
            state["mean"],
            state["std"],
            encoder,
            state["autoencoder"],
            state.get("autoencoder_digest", ""),  # format 1 did not record it
            state["history"],
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # a damaged or hand-edited file
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"prior={path}: a latent prior file with missing or damaged contents ({reason})") from None


def fit_model_prior(
    checkpoint: str,
    config: PriorConfig,
    out: Path,
    data: str | None = None,
    progress: Progress | None = None,
) -> LatentPrior:
    """Fit a prior to the eval-mode latents of an autoencoder's training split and save it to ``out``.

    The flow-matching prior also learns each structure's condition (elements, composition, atoms per
    cell, space group at 0.1 Å).
    """
    from nesfgen.checkpoint import checkpoint_digest, load_model
    from nesfgen.data.names import resolve_dataset
    from nesfgen.decoder import encode
    from nesfgen.symmetry import space_group_number

    if Path(out).is_dir():
        raise UserError(f"out={out} is a folder; give the prior's file, e.g. out={Path(out) / 'prior.pt'}")
    output_folder(Path(out).parent, "prior's folder", create=False)  # before minutes of fitting, not after
    digest = checkpoint_digest(checkpoint)  # which refuses an ensemble by name, before the fitting too
    trained = load_model(checkpoint)
    dataset = resolve_dataset(data or trained.recipe.data.dataset_name)
    crystals = dataset.load(trained.recipe.data.train_split)
    torch.set_num_threads(config.threads)
    latents = encode(trained, crystals).cpu()
    conditions = None
    if config.kind == "flowmatch":
        encoder = ConditionEncoder(tuple(trained.species_table))
        conditions = [encoder.describe(c.atomic_numbers, space_group_number(c)) for c in crystals]
    prior = fit_prior(latents, config, trained.species_table, conditions, progress)
    prior.autoencoder = checkpoint
    prior.autoencoder_digest = digest
    prior.history |= {"dataset": dataset.name, "structures": len(crystals)}
    save_prior(prior, out)
    return prior


# --- a check without decoding ------------------------------------------------------------------------


def nearest_distances(queries: Tensor, points: Tensor, chunk: int = 1024) -> Tensor:
    """(Q,) Euclidean distance from each query row to its nearest row of ``points``."""
    return torch.cat([torch.cdist(part, points).min(dim=1).values for part in queries.split(chunk)])


def latent_check(samples: Tensor, train: Tensor, held_out: Tensor) -> dict[str, float]:
    """How a prior's samples sit among the latents, in the autoencoder's latent units.

    coverage: mean distance from a held-out latent to its nearest sample (lower: the samples reach
    structures the prior never saw). precision: mean distance from a sample to its nearest training
    latent, beside the held-out latents' own value; far below it would mean the prior copies its
    training set, far above it that samples fall where no structure is. std_ratio: the samples' spread
    per dimension over the training latents', averaged.
    """
    return {
        "coverage": float(nearest_distances(held_out, samples).mean()),
        "precision": float(nearest_distances(samples, train).mean()),
        "held_out_precision": float(nearest_distances(held_out, train).mean()),
        "std_ratio": float((samples.std(dim=0) / train.std(dim=0).clamp_min(1e-6)).mean()),
    }


def check_model_prior(
    prior: LatentPrior, checkpoint: str, split: str = "val", n: int = 1000, seed: int = 0, data: str | None = None
) -> dict[str, Any]:
    """Sample ``n`` latents unconditionally and compare them with the encoded training and ``split`` latents.

    A cheap, decode-free way to choose a prior's size and length on a validation split.
    """
    from nesfgen.checkpoint import load_model
    from nesfgen.data.names import resolve_dataset
    from nesfgen.decoder import encode

    if n < 2:
        raise UserError(f"n={n}: a check needs at least 2 samples")
    trained = load_model(checkpoint)
    dataset = resolve_dataset(data or trained.recipe.data.dataset_name)
    if split == trained.recipe.data.train_split:
        raise UserError(f"split={split} is the split the prior was fitted to; give a held-out split (e.g. val)")
    torch.set_num_threads(prior.config.threads)
    train = encode(trained, dataset.load(trained.recipe.data.train_split)).cpu().float()
    held_out = encode(trained, dataset.load(split)).cpu().float()
    if train.shape[1] != prior.mean.numel():
        raise UserError(
            f"the prior samples {prior.mean.numel()}-dimensional latents; {checkpoint} encodes {train.shape[1]}"
        )
    with torch.no_grad():
        samples = prior.sample(n, seed).float()
    return {
        "checkpoint": checkpoint,
        "dataset": dataset.name,
        "split": split,
        "n": n,
        "seed": seed,
        "train_structures": len(train),
        "held_out_structures": len(held_out),
        **latent_check(samples, train, held_out),
    }


@dataclass(frozen=True, kw_only=True)
class PriorFitOptions(PriorConfig):
    """A prior's settings, the autoencoder whose training latents it fits, and the file to write."""

    checkpoint: str = "nesf-lcs6"
    data: str | None = None
    out: str = required("nesfgen prior fit needs out=FILE.pt")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.out.endswith(".pt"), "out", self.out, "a file name ending in .pt (the prior is a PyTorch file)")

    @property
    def config(self) -> PriorConfig:
        return PriorConfig(**{name: getattr(self, name) for name in PriorConfig.__dataclass_fields__})
