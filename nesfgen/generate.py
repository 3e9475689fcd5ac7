"""Sampling new structures: latents from a learned prior (or a VAE's N(0, I)), decoded by the estimator.

The default is the shipped autoencoder with its learned latent prior (see ``nesfgen.prior``): samples
then decode as well as the autoencoder reconstructs. A VAE checkpoint samples its own N(0, I) prior;
``near=`` samples around an encoded structure. The samples are measured with ``generative_metrics``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nesfgen.baselines import reference_rows
from nesfgen.checkpoint import DEFAULT_MODEL, DEFAULT_VAE_MODEL, PACKAGED_MODELS, TrainedModel, checkpoint_digest
from nesfgen.crystal import Crystal
from nesfgen.data.builtin import find_known
from nesfgen.data.importers import read_structure_file
from nesfgen.data.store import CrystalSet
from nesfgen.decoder import Decoder, Decoding, SpeciesConstraint, encode, training_atom_range
from nesfgen.errors import UserError
from nesfgen.generative_metrics import build_reference, reduced_formula, score
from nesfgen.options import DecodeOptions
from nesfgen.prior import (
    Condition,
    LatentPrior,
    condition_holds,
    draw_conditions,
    load_prior,
    parse_condition,
    parse_draw,
)
from nesfgen.progress import Progress
from nesfgen.sample_files import Generation, write_samples
from nesfgen.stream import BASELINES_FOLDER, RELAXED_FOLDER, SampleStream
from nesfgen.symmetry import space_group_number

if TYPE_CHECKING:  # imported where a relaxation starts: sampling alone does not load the relaxation stack
    from nesfgen.stability import ScreenOptions

log = logging.getLogger(__name__)


#: shipped learned priors over the default autoencoder's latents: nesfgen/models/priors/<autoencoder>-<kind>.pt
PRIORS = PACKAGED_MODELS / "priors"
#: the prior ``nesfgen sample`` uses without prior=
DEFAULT_PRIOR = "flowmatch"
#: prior= values: a shipped kind, "vae" (a variational checkpoint's own N(0, I)), or a .pt file
PRIOR_CHOICES = ("flowmatch", "flow", "vae")
#: where ``nesfgen sample`` writes without out=
DEFAULT_FOLDER = "samples"
#: near='s default noise scale around the structure's latent (latent units)
NEAR_RADIUS = 0.5
#: the condition parts each unconditional sample of a flow-matching prior takes from a random training structure
#: (``draw=``); chosen on the validation split over the prior's own compositions (docs/decoding.md)
DEFAULT_DRAW = ("composition", "num_atoms")
#: the prior's noise scale when conditions are drawn and no temperature= is given: chosen on the validation
#: split among 1.0, 0.9 and 0.8 (0.8 took novelty below 50 %; docs/decoding.md)
DRAWN_TEMPERATURE = 0.9
#: Å: samples are snapped to the highest space group spglib finds within this (symmetrize=true by default for
#: sample): about the decoder's own position error; chosen on the validation split (docs/decoding.md)
SAMPLE_SYMPREC = 0.3
#: with conditions given (elements=, formula=, num_atoms=, ...), how many more times a sample whose decode misses
#: them is drawn again (the same condition, new noise) before it is kept as decoded (num_atoms=8: held 62 -> 94 %;
#: with today's model 55.5 -> 90.5 %, and 100 % with the field's fill on the last attempt).
#: Not for drawn conditions, where on the validation split it took novelty under 50 % (docs/decoding.md)
CONDITION_REDRAWS = 2
#: Samples past which ``sample`` needs force=true: at seconds per sample on a CPU, more is a run of days.
MAX_SAMPLES = 10_000


def default_checkpoint() -> str:
    """The shipped VAE, or a UserError saying how to get a model to sample from."""
    if not (PACKAGED_MODELS / f"{DEFAULT_VAE_MODEL}.pt").is_file():
        raise UserError(
            f"the default model {DEFAULT_VAE_MODEL} is not shipped in this installation ({PACKAGED_MODELS}); "
            "give checkpoint=RUN_DIR|FILE.pt of a variational model, e.g. one trained with "
            "`nesfgen train recipe=vae-quickstart`"
        )
    return DEFAULT_VAE_MODEL


def sample_latents(
    count: int,
    size: int,
    seed: int,
    temperature: float = 1.0,
    center: torch.Tensor | None = None,
    radius: float = NEAR_RADIUS,
) -> torch.Tensor:
    """(count, size) latents: temperature × N(0, I), or ``center`` (size,) + radius × N(0, I).

    Drawn on the CPU from their own generator, so a seed gives the same latents on every device.
    """
    noise = torch.randn(count, size, generator=torch.Generator().manual_seed(seed))
    return noise * temperature if center is None else center.cpu()[None, :] + radius * noise


def find_structure(text: str, reference: CrystalSet | None) -> Crystal:
    """A structure given as a CIF/POSCAR path, or a formula found in the reference set or the built-in table.

    A formula takes the first structure of the reference (training) set with that reduced formula, then
    the first textbook compound of the built-in table.

    Raises:
        UserError: if the file cannot be read or the formula is found nowhere.
    """
    path = Path(text).expanduser()
    if path.is_file() or path.suffix or "/" in text:
        return read_structure_file(path)
    known = find_known(text)  # raises a UserError for text that is not a formula
    if reference is not None:
        from pymatgen.core import Composition

        wanted = Composition(text).reduced_formula
        for index in range(len(reference)):
            start, stop = reference.offsets[index], reference.offsets[index + 1]
            if reduced_formula(reference.atomic_numbers[start:stop]) == wanted:
                return reference[index]
    if known:
        return known[0].crystal
    where = "the training set and " if reference is not None else ""
    raise UserError(
        f"near={text}: no structure with this formula in {where}the built-in table of textbook compounds; "
        "give a CIF or POSCAR path instead"
    )


def reference_splits(
    trained: TrainedModel, data: str | None, coverage_split: str = "test"
) -> tuple[tuple[CrystalSet, CrystalSet | None] | None, dict[str, Any]]:
    """The training split (novelty, distributions) and a held-out split (coverage) to measure samples against.

    Without ``data`` it is the model's own training data when that dataset is available here; otherwise
    the comparisons are skipped, with the reason in the note. Coverage is measured against the test split,
    as CDVAE does; choosing settings by it calls for ``coverage_split="val"``. A dataset without a "test"
    split skips coverage; any other missing split is an error.
    Only loaded here: their fingerprints (build_reference, slow) wait until the samples are decoded.
    """
    from nesfgen.data.names import resolve_dataset

    name = data or trained.recipe.data.dataset_name
    split = trained.recipe.data.train_split
    try:
        dataset = resolve_dataset(name)
    except UserError:
        if data:
            raise
        reason = (
            f"the training dataset {name!r} is not available here, so novelty, coverage and the distribution "
            "distances were skipped; import it, or give data=NAME to compare against another dataset"
        )
        log.info(reason)
        return None, {"dataset": name, "skipped": reason}
    crystals = dataset.load(split)
    if coverage_split == split:
        raise UserError(f"coverage_split={coverage_split} is the training split; give a held-out split (val, test)")
    held_out = None  # a dataset without "test" skips coverage; any other missing split is refused by load()
    if coverage_split in dataset.split_names or coverage_split != "test":
        held_out = dataset.load(coverage_split)
    note = {
        "dataset": dataset.name,
        "split": split,
        "structures": len(crystals),
        "coverage_split": coverage_split if held_out is not None else None,
        "is_training_data": dataset.content_hash == trained.dataset_hash,
    }
    return (crystals, held_out), note


def _encode_one(trained: TrainedModel, crystal: Crystal) -> torch.Tensor:
    """(D,) the latent (a VAE's posterior mean) of one structure."""
    missing = sorted(set(crystal.atomic_numbers.tolist()) - set(trained.species_table))
    if missing:
        from pymatgen.core import Element

        symbols = ", ".join(Element.from_Z(z).symbol for z in missing)
        raise UserError(f"near: {crystal.id or 'the structure'} holds {symbols}, which the model was not trained on")
    return encode(trained, CrystalSet.from_crystals([crystal]))[0]


def shipped_prior(kind: str) -> Path:
    """The prior of ``kind`` shipped for the shipped autoencoder, the only model the package holds priors for."""
    path = PRIORS / f"{DEFAULT_MODEL}-{kind}.pt"
    if not path.is_file():
        raise UserError(
            f"prior={kind}: no shipped prior {path.name} in {PRIORS}; fit one with "
            f"`nesfgen prior fit kind={kind} out=FILE.pt` and give prior=FILE.pt"
        )
    return path


def resolve_prior(prior: str | None, checkpoint: str | None) -> tuple[str, LatentPrior | None]:
    """The model to decode with and its learned prior (None: the VAE's own N(0, I)).

    Without prior=, a given checkpoint samples its own N(0, I): the shipped priors fit only the shipped
    autoencoder (DEFAULT_MODEL).
    """
    if prior == "vae" or (prior is None and checkpoint not in (None, DEFAULT_MODEL)):
        return checkpoint or default_checkpoint(), None
    if prior is None or prior in PRIOR_CHOICES:
        learned = load_prior(shipped_prior(prior or DEFAULT_PRIOR))
    elif Path(prior).is_file():
        learned = load_prior(Path(prior))
    else:
        raise UserError(f"prior={prior}: expected one of {', '.join(PRIOR_CHOICES)} or a prior .pt file")
    model = checkpoint or learned.autoencoder or DEFAULT_MODEL
    _check_prior_fits(learned, model)
    return model, learned


def _check_prior_fits(learned: LatentPrior, model: str) -> None:
    """A prior knows one model's latents: another model, even of the same latent size and data, reads them
    as something else, so its decodes would be silently wrong."""
    if not learned.autoencoder_digest:
        log.warning(
            "the prior does not record the model it was fitted to (an older file): not checked against %s", model
        )
        return
    if checkpoint_digest(model) != learned.autoencoder_digest:
        raise UserError(
            f"the prior was fitted to the latents of {learned.autoencoder or 'another model'}, not of {model} (their "
            f"checkpoint files differ): fit one to this model with `nesfgen prior fit checkpoint={model} out=FILE.pt`, "
            "then give prior=FILE.pt"
        )


@dataclass(frozen=True, kw_only=True)
class SampleOptions(DecodeOptions):
    """What to sample and how to measure it.

    ``checkpoint``: the model to decode with (run folder, .pt file or shipped name); None: the shipped
    autoencoder with its learned prior, or the shipped VAE with prior="vae". ``temperature``: scale of the
    N(0, I) noise a VAE's latents or a learned prior's ODE start from (None: DRAWN_TEMPERATURE when the
    conditions are drawn, else 1). ``symmetrize``: snap each sample to its space group within ``tolerance``
    (on by default here; false: the raw decodes). ``near``: sample around this
    structure (a CIF/POSCAR path or a formula) instead of a prior: z = its latent + radius × N(0, I).
    ``data``: the dataset to measure against (default: the model's training data); ``coverage_split``: its
    held-out split for COV-R / COV-P ("test" as CDVAE; "val" when choosing settings). ``prior``:
    "flowmatch" / "flow" (shipped learned priors), "vae", or a prior .pt file (see resolve_prior).
    ``elements``, ``formula``, ``num_atoms``, ``crystal_system``, ``spacegroup``: what the samples should
    hold (flow-matching prior only); ``draw``: instead, these parts of the condition (e.g.
    "composition,num_atoms") taken for each sample from a random structure of the training split
    (``prior.draw_conditions``); "" (automatic): DEFAULT_DRAW for a flow-matching prior without conditions when
    its model's training split is here, else nothing; "none": the prior's own compositions (a string, not None,
    so that the command line's draw=none is not read as "not given"); ``guidance``: its classifier-free guidance scale (1: plain conditional
    sampling); ``constrain``: with elements= or formula=, also restrict the decoded species to those
    elements and, where the atom count allows, to the formula's exact amounts; with num_atoms=, bring the
    decoded count to it (atoms the clusters cannot supply are filled in from the field on the last attempt). ``redraws``: draw a sample whose decode misses
    its condition again (same condition, new noise) up to this many times, keeping the first decode that holds
    it, else the first (None: CONDITION_REDRAWS with conditions given, none when drawn). ``baselines``: also score the
    ceiling and floor rows (``nesfgen.baselines``). ``out``: write each decoded chunk's CIFs there as it is
    finished and continue an interrupted sampling with the same settings (None: in memory; the command
    writes to ``samples``). ``force``: allow more than MAX_SAMPLES samples. ``relax``: relax the samples
    (and baselines) with CHGNet into OUT/relaxed with ``fmax``, ``steps``, ``hull`` and the weights ``potential``.
    """

    symmetrize: bool = True
    n: int = 100
    seed: int = 0
    temperature: float | None = None
    near: str | None = None
    radius: float | None = None  # with near=: the noise scale around its latent; None: NEAR_RADIUS
    data: str | None = None
    prior: str | None = None
    elements: str | None = None
    formula: str | None = None
    num_atoms: int | None = None
    crystal_system: str | None = None
    spacegroup: int | None = None
    draw: str = ""
    guidance: float = 1.0
    constrain: bool = True
    redraws: int | None = None
    baselines: bool = False
    coverage_split: str = "test"
    out: str | None = None
    force: bool = False
    relax: bool = False
    fmax: float | None = None
    steps: int | None = None
    hull: str | None = None
    potential: str | None = None

    @property
    def tolerance(self) -> float:
        """The snapping tolerance in Å: symprec=, or SAMPLE_SYMPREC (looser than evaluate's stated 0.1 Å)."""
        return SAMPLE_SYMPREC if self.symprec is None else self.symprec

    @property
    def spread(self) -> float:
        """The noise scale around near='s latent: radius=, or NEAR_RADIUS."""
        return NEAR_RADIUS if self.radius is None else self.radius

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1:
            raise UserError(f"n must be at least 1, got {self.n}")
        for key, value in (("temperature", self.temperature), ("radius", self.radius)):
            if value is not None and not 0 < value < math.inf:  # also refuses NaN
                raise UserError(f"{key} must be a positive, finite number, got {key}={value}")
        if self.radius is not None and self.near is None:
            raise UserError("radius= is the spread around near=; add near=FORMULA|PATH or drop radius=")
        if not self.guidance >= 0:
            raise UserError(f"guidance must be 0 (unconditional) or more (1: plain conditional), got {self.guidance}")
        if self.redraws is not None and self.redraws < 0:
            raise UserError(f"redraws must be 0 or more, got {self.redraws}")
        if self.seed < 0:  # numpy's generators, which draw the conditions and the redraws, take none below 0
            raise UserError(f"seed must be 0 or more, got {self.seed}")
        if not self.relax and (self.fmax, self.steps, self.hull, self.potential) != (None,) * 4:
            raise UserError("fmax=, steps=, hull= and potential= go with relax=true")
        if self.potential is not None:  # refused before sampling, not after it when the relaxation starts
            from nesfgen.relax import check_potential

            check_potential(self.potential)
        if self.drawn_parts and not self.condition.is_empty():  # an explicit draw= only: "" defers to conditions
            raise UserError(
                "draw= takes each sample's condition from the training split; give it without elements=, formula=, ..."
            )
        if self.drawn_parts and self.near is not None:
            raise UserError("draw= conditions a learned prior's samples; near= samples around one structure instead")

    @property
    def drawn_parts(self) -> tuple[str, ...]:
        return parse_draw(self.draw)

    @property
    def condition(self) -> Condition:
        return parse_condition(self.elements, self.formula, self.num_atoms, self.crystal_system, self.spacegroup)


@dataclass(frozen=True, kw_only=True)
class PriorCheckOptions:
    """Which learned prior to check against which held-out split, with how many samples."""

    prior: str = DEFAULT_PRIOR
    checkpoint: str | None = None
    data: str | None = None
    split: str = "val"
    n: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prior == "vae":
            raise UserError("nesfgen prior check takes a learned prior: prior=flowmatch|flow|FILE.pt")


def check_prior(options: PriorCheckOptions) -> dict[str, Any]:
    """Compare a learned prior's samples with held-out latents, without decoding (``prior.check_model_prior``)."""
    from nesfgen.prior import check_model_prior

    checkpoint, learned = resolve_prior(options.prior, options.checkpoint)
    return check_model_prior(learned, checkpoint, options.split, options.n, options.seed, options.data)


def _reconstruct(decoder: Decoder, crystals: CrystalSet) -> list[Crystal | None] | None:
    """The held-out crystals through the model's encoder and the samples' decoder (its estimator settings
    and symmetrisation; no condition's species constraint, which is about the samples); None where the
    model cannot encode them (elements outside its species table)."""
    if not set(np.unique(crystals.atomic_numbers).tolist()) <= set(decoder.species_table):
        return None
    return decoder.decode(decoder.encode(crystals), [f"{id}-decoded" for id in crystals.ids]).crystals


def _check_atom_count(condition: Condition, trained: TrainedModel, formula: str | None) -> None:
    """A ``num_atoms=``, or a ``formula=`` whose smallest cell holds more atoms than any training cell held,
    decodes nothing that meets it: said up front instead."""
    fewest = condition.fewest_atoms()
    if condition.num_atoms is None and fewest is None:
        return
    if (atom_range := training_atom_range(trained)) is None:
        return
    low, high = atom_range
    if condition.num_atoms is not None and condition.num_atoms > high:
        raise UserError(
            f"num_atoms={condition.num_atoms}: the model was trained on cells of {low} to {high} atoms and cannot "
            "draw more; give a number in that range"
        )
    if fewest is not None and fewest > high:
        raise UserError(
            f"formula={formula}: its smallest cell holds {fewest} atoms, and the model was trained on cells of {low} "
            f"to {high} atoms; give a formula of at most {high} atoms"
        )


def sample_structures(options: SampleOptions, progress: Progress | None = None) -> Generation:
    """Decode ``options.n`` latents into structures and measure them."""
    started = time.perf_counter()
    n, seed, near, radius = options.n, options.seed, options.near, options.spread
    symmetrize, condition = options.symmetrize, options.condition
    decoder, learned = _load_generator(options)
    trained = decoder.trained
    _check_atom_count(condition, trained, options.formula)
    splits, reference_note = reference_splits(trained, options.data, options.coverage_split)
    anchor = find_structure(near, splits[0] if splits else None) if near is not None else None
    drawn = _drawn_parts(options, learned, splits is not None and bool(reference_note.get("is_training_data")))
    conditions: Condition | list[Condition] = condition
    if drawn:
        if splits is None or learned is None:
            raise UserError(f"draw= needs a learned prior and the training split ({reference_note.get('skipped', '')})")
        conditions = draw_conditions(splits[0], drawn, n, seed)
    temperature = _temperature(options, drawn)
    if anchor is not None:
        z = sample_latents(n, trained.recipe.model.latent_size, seed, 1.0, _encode_one(trained, anchor), radius)
    elif learned is not None:
        z = learned.sample(n, seed, conditions, options.guidance, temperature)
    else:
        z = sample_latents(n, trained.recipe.model.latent_size, seed, temperature)
    each = [conditions] if isinstance(conditions, Condition) else conditions
    redraw, rounds = None, _redraws(options, drawn)
    if learned is not None and rounds and any(not c.is_empty() for c in each):
        wanted = each if len(each) == n else each * n

        def latents(indices: list[int], round: int) -> torch.Tensor:
            stream = int(np.random.SeedSequence([seed, round, indices[0]]).generate_state(1)[0])
            return learned.sample(len(indices), stream, [wanted[i] for i in indices], options.guidance, temperature)

        redraw = Redraw(wanted, latents, rounds)
    # atoms the field marks but no particle finds are filled in on the last attempt only: the first when nothing
    # is drawn again (no redraws asked, or a prior that cannot redraw), else the last redraw (docs/decoding.md)
    fill = redraw is None
    constraints = [_species_constraint(c, not drawn, fill) for c in each] if options.constrain else [None]
    species_constraint = constraints[0] if len(constraints) == 1 else constraints
    constrained = any(c is not None for c in constraints)
    crystals, failed = _decode_latents(options, decoder, z, species_constraint, constrained, drawn, redraw, progress)
    symmetrized: dict[str, Any] = {"symmetrize": symmetrize}
    if symmetrize:
        symmetrized |= {"symmetrize_symprec": decoder.symprec, "symmetrize_failed": failed}
    reference = build_reference(*splits) if splits is not None else None
    rows, summary = score(crystals, reference)
    baseline_rows, baseline_crystals = {}, {}
    if options.baselines and reference is not None:
        reconstructed = _reconstruct(decoder, splits[1]) if splits[1] is not None else None
        baseline_rows, baseline_crystals = reference_rows(
            reference, n, seed, held_out=options.coverage_split, reconstructed=reconstructed
        )
    source = "near" if near is not None else "vae" if learned is None else f"prior-{learned.config.kind}"
    summary = {
        "checkpoint": trained.path,
        "variational": trained.recipe.model.variational,
        "generator": source,
        "prior": options.prior or (DEFAULT_PRIOR if learned is not None else None),
        "n": n,
        "seed": seed,
        "temperature": temperature if near is None else None,
        "near": near,
        "near_structure": anchor.id if anchor is not None else None,
        "radius": radius if near is not None else None,
        **symmetrized,
        **summary,
        "drawn": list(drawn) or None,
        "conditions": condition_rates(conditions, rows, crystals) if any(not c.is_empty() for c in each) else None,
        "guidance": options.guidance if any(not c.is_empty() for c in each) else None,
        "species_constrained": constrained,
        "redraws": redraw.rounds if redraw is not None else 0,
        "baselines": baseline_rows or None,
        "reference": reference_note,
        "estimator": decoder.settings,
        "seconds": time.perf_counter() - started,
    }
    return Generation(summary, rows, crystals, reference, baseline_crystals)


def _drawn_parts(options: SampleOptions, learned: LatentPrior | None, have_training_split: bool) -> tuple[str, ...]:
    """The condition parts each sample takes from a training structure: draw= as given, else DEFAULT_DRAW when
    a flow-matching prior samples without conditions and the model's own training split is here."""
    if options.draw:
        return options.drawn_parts
    automatic = learned is not None and learned.config.kind == "flowmatch" and options.near is None
    if automatic and options.condition.is_empty() and not have_training_split:
        log.info("the model's training split is not here: samples take the prior's own compositions (draw=none)")
    return DEFAULT_DRAW if automatic and options.condition.is_empty() and have_training_split else ()


def _load_generator(options: SampleOptions) -> tuple[Decoder, LatentPrior | None]:
    """The decoder and the learned prior (None: the VAE's N(0, I), or a ball around ``near``), checked to fit."""
    if options.near is not None:
        learned, model_name = None, options.checkpoint or DEFAULT_MODEL
    else:
        model_name, learned = resolve_prior(options.prior, options.checkpoint)
    if learned is None and not options.condition.is_empty():
        if options.near is not None:
            raise UserError("near= samples around one structure and takes no condition (elements=, formula=, ...)")
        raise UserError("conditions (elements=, formula=, ...) need a learned prior: prior=flowmatch")
    decoder = Decoder.load(options, default=model_name)
    trained = decoder.trained
    if options.near is None and learned is None and not trained.recipe.model.variational:
        raise UserError(
            f"{trained.path} is an autoencoder (model.variational=false): it has no N(0, I) prior; sample it with "
            "a prior fitted to it (`nesfgen prior fit checkpoint=... out=FILE.pt`, then prior=FILE.pt) or around "
            "a structure with near=FORMULA|PATH"
        )
    if learned is not None and learned.mean.numel() != trained.recipe.model.latent_size:
        raise UserError(
            f"the prior's latents have {learned.mean.numel()} dimensions, the model {trained.path} "
            f"{trained.recipe.model.latent_size}: fit the prior to this model (nesfgen prior fit checkpoint=...)"
        )
    return decoder, learned


def _decode_latents(
    options: SampleOptions,
    decoder: Decoder,
    z: torch.Tensor,
    species_constraint: SpeciesConstraint | list[SpeciesConstraint | None] | None,
    constrained: bool,
    drawn: tuple[str, ...],
    redraw: Redraw | None,
    progress: Progress | None,
) -> tuple[list[Crystal | None], int]:
    """Decode chunk by chunk (each chunk's misses drawn again with ``redraw``), streaming each chunk to
    ``options.out`` so that a stopped run resumes there. Returns the crystals and how many stayed unsymmetrised."""
    n = options.n
    settings = {
        "checkpoint": decoder.trained.path,
        "n": n,
        "seed": options.seed,
        "temperature": _temperature(options, drawn),
    }
    settings |= {"near": options.near, "radius": options.spread, "symmetrize": options.symmetrize}
    settings |= {"symprec": decoder.symprec, "prior": options.prior, "condition": asdict(options.condition)}
    settings |= {"guidance": options.guidance, "constrain": constrained, "draw": list(drawn)}
    settings["redraws"] = redraw.rounds if redraw is not None else 0
    settings["estimator"] = decoder.settings
    out = Path(options.out) if options.out else None
    stream = SampleStream(out, settings)
    crystals, failed = stream.finished()
    if progress is not None:
        progress(len(crystals), n)
    chunk_size = decoder.config.chunk_size
    decoding_started = time.monotonic()
    for start in range(len(crystals), n, chunk_size):
        chunk_z = z[start : start + chunk_size]
        ids = [f"sample-{start + k:04d}" for k in range(len(chunk_z))]
        chunk_species = species_constraint
        if isinstance(species_constraint, list):
            chunk_species = species_constraint[start : start + chunk_size]
        decoding = decoder.decode(chunk_z, ids, species=chunk_species)
        chunk, unsymmetrized = decoding.crystals, decoding.unsymmetrized
        if redraw is not None:
            chunk, unsymmetrized = _redraw_misses(decoder, redraw, start, decoding, species_constraint)
        stream.add(start, chunk, sum(unsymmetrized))
        crystals, failed = crystals + chunk, failed + sum(unsymmetrized)
        if progress is not None:
            progress(len(crystals), n)
        if n > MAX_SAMPLES and not options.force:
            _refuse_long_run(n, len(chunk), time.monotonic() - decoding_started, out)
    return crystals, failed


@dataclass(frozen=True)
class Redraw:
    """Each sample's condition, and new latents under them: (sample indices, round) -> (len(indices), D)."""

    conditions: list[Condition]
    latents: Callable[[list[int], int], torch.Tensor]
    rounds: int

    def holds(self, index: int, crystal: Crystal | None) -> bool:
        """Whether sample ``index`` decoded into a crystal that holds every part of its condition."""
        if crystal is None:
            return False
        wanted = self.conditions[index]
        needs_group = wanted.crystal_system is not None or wanted.spacegroup is not None
        group = space_group_number(crystal) if needs_group else 0
        return all(condition_holds(wanted, crystal.atomic_numbers, group).values())


def _redraw_misses(
    decoder: Decoder,
    redraw: Redraw,
    start: int,
    decoding: Decoding,
    species_constraint: SpeciesConstraint | list[SpeciesConstraint | None] | None,
) -> tuple[list[Crystal | None], list[bool]]:
    """A decoded chunk (samples ``start``...) with each sample that misses its condition drawn and decoded again,
    up to ``redraw.rounds`` times; the first decode that holds it is kept, else the first decode."""
    chunk, unsymmetrized = list(decoding.crystals), list(decoding.unsymmetrized)
    for round in range(1, redraw.rounds + 1):
        missing = [k for k, crystal in enumerate(chunk) if not redraw.holds(start + k, crystal)]
        if not missing:
            break
        indices = [start + k for k in missing]
        species = species_constraint
        if isinstance(species_constraint, list):
            species = [species_constraint[i] for i in indices]
        if round == redraw.rounds:  # the last attempt: atoms still missing are filled in from the field
            species = _with_fill(species)
        again = decoder.decode(redraw.latents(indices, round), [f"sample-{i:04d}" for i in indices], species=species)
        for k, crystal, failed in zip(missing, again.crystals, again.unsymmetrized):
            if redraw.holds(start + k, crystal):
                chunk[k], unsymmetrized[k] = crystal, failed
        log.debug("chunk at %d, round %d: %d of %d drawn again", start, round, len(missing), len(chunk))
    return chunk, unsymmetrized


def sample(options: SampleOptions, progress: Callable[[str], Progress] | None = None) -> dict[str, Any]:
    """Sample, write the folder (``options.out``, else ``samples``) and, with relax=true, relax and screen the
    samples and the baselines on the same hull; ``progress(label)`` gives each stage's progress callback."""
    out = Path(options.out or DEFAULT_FOLDER)
    if options.relax and (screen := _screen_options(out, options)).hull_spec:
        from nesfgen.stability import open_hull

        open_hull(screen.hull_spec, screen.potential)  # a hull not built yet is said before sampling, not after
    generation = sample_structures(replace(options, out=str(out)), progress("decoding samples") if progress else None)
    write_samples(generation, out)
    result = {**generation.summary, "out": str(out)}
    if options.relax:
        folders = {"samples": out} | {name: out / BASELINES_FOLDER / name for name in generation.baselines}
        relaxed = {  # the ceiling and the floor on the same hull as the samples; None: no structure to relax
            name: _relax_folder(folder, options, progress) if any(folder.glob("*.cif")) else None
            for name, folder in folders.items()
        }
        result["relax"] = relaxed.pop("samples")
        if relaxed:
            result["relax_baselines"] = relaxed
    return result


def _screen_options(folder: Path, options: SampleOptions) -> ScreenOptions:
    """How a folder of samples (or of a baseline) is relaxed into FOLDER/relaxed and screened: data='s hull or hull=."""
    from nesfgen.relax import DEFAULT_FMAX, DEFAULT_POTENTIAL, DEFAULT_STEPS
    from nesfgen.stability import ScreenOptions

    return ScreenOptions(
        inputs=(str(folder),),
        out=str(folder / RELAXED_FOLDER),
        fmax=DEFAULT_FMAX if options.fmax is None else options.fmax,
        steps=DEFAULT_STEPS if options.steps is None else options.steps,
        hull=options.hull,
        data=options.data,
        potential=options.potential or DEFAULT_POTENTIAL,
    )


def _relax_folder(folder: Path, options: SampleOptions, progress: Callable[[str], Progress] | None) -> dict[str, Any]:
    """Relax a folder of CIFs into FOLDER/relaxed and screen them."""
    from nesfgen.stability import relax_and_screen

    return relax_and_screen(_screen_options(folder, options), progress("relaxing with CHGNet") if progress else None)


def _redraws(options: SampleOptions, drawn: tuple[str, ...]) -> int:
    """redraws=, else none for drawn conditions and CONDITION_REDRAWS otherwise (used only where there are conditions)."""
    if options.redraws is not None:
        return options.redraws
    return 0 if drawn else CONDITION_REDRAWS


def _temperature(options: SampleOptions, drawn: tuple[str, ...]) -> float:
    """temperature=, else DRAWN_TEMPERATURE when the conditions are drawn, else 1."""
    return options.temperature or (DRAWN_TEMPERATURE if drawn else 1.0)


def _species_constraint(condition: Condition, hold_count: bool, fill: bool) -> SpeciesConstraint | None:
    """The species and atom count decoding must respect, or None when the condition names neither.

    ``hold_count``: bring the decoded count to an asked num_atoms. Not for drawn conditions: on the
    validation split it cost 2.5 points of COV-P and widened the density and atom-count distances, since the
    estimator has weak atoms to drop far more often than rejected clusters to add; with the field's fill
    it cost 2.7 points of COV-P and took W1 density from 0.26 to 0.47 g/cm³ (docs/decoding.md).
    ``fill``: atoms the estimator's clusters cannot supply are added where the field marks them."""
    num_atoms = condition.num_atoms if hold_count else None
    if condition.composition is not None:
        return SpeciesConstraint(tuple(sorted(condition.composition)), dict(condition.composition), num_atoms, fill)
    if condition.elements is not None or num_atoms is not None:
        return SpeciesConstraint(tuple(condition.elements or ()), num_atoms=num_atoms, fill=fill)
    return None


def _with_fill(
    species: SpeciesConstraint | list[SpeciesConstraint | None] | None,
) -> SpeciesConstraint | list[SpeciesConstraint | None] | None:
    """The same constraints with the field's fill switched on."""
    if isinstance(species, list):
        return [replace(c, fill=True) if c is not None else None for c in species]
    return replace(species, fill=True) if species is not None else None


def _refuse_long_run(n: int, timed: int, seconds: float, out: Path | None) -> None:
    """Stop a sampling of more than MAX_SAMPLES without force=true, saying how long it would take."""
    days = n * seconds / timed / 86400
    kept = f"; the {timed} decoded are saved in {out} and the same command with force=true continues" if out else ""
    raise UserError(
        f"n={n} samples would take about {days:.1f} days here ({seconds / timed:.2f} s each, timed on the first "
        f"{timed}); more than {MAX_SAMPLES:,} need force=true{kept}"
    )


def condition_rates(
    condition: Condition | list[Condition], rows: list[dict], crystals: list[Crystal | None]
) -> dict[str, Any]:
    """How often each asked-for part of the condition (one for all, or each sample's own) holds in the decoded
    structures, in % of all samples."""
    each = [condition] * len(rows) if isinstance(condition, Condition) else condition
    held = [
        condition_holds(wanted, crystal.atomic_numbers, row["space_group_number"]) if crystal is not None else {}
        for wanted, row, crystal in zip(each, rows, crystals)
    ]
    parts = list(condition_holds(each[0], np.array([1]), 0))
    rates = {f"{part}_pct": 100.0 * sum(h.get(part, False) for h in held) / len(held) for part in parts}
    rates["all_pct"] = 100.0 * sum(bool(h) and all(h.values()) for h in held) / len(held)
    return rates
