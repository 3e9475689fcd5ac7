"""The variational NeSF: a Pyro model and guide around the autoencoder's encoder, fields and lattice heads.

The encoder's trunk and its head are the autoencoder's; the head's last hidden layer also feeds a
softplus scale, so the encoder gives a Gaussian posterior whose mean is what ``encode`` returns (and
what evaluation decodes). The Pyro model puts a standard normal prior on z and turns the
autoencoder's weighted losses into likelihood terms with ``pyro.factor``; the guide is the encoder.
The KL weight (0.001 in the reference configuration) is a ``poutine.scale`` on the latent site, in
the model and the guide alike. As in the reference implementation, the KL term is summed over a
batch's structures while the field and lattice losses are batch means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import Tensor, nn

from nesfgen.config import LossConfig, ModelConfig
from nesfgen.errors import UserError
from nesfgen.model import NeSF
from nesfgen.sampling import Atoms, Queries

#: Pyro names shared by the model and the guide
MODULE = "nesf"
STRUCTURES = "structures"  # the plate over a batch's structures
LATENT = "z"
FIELD_LIKELIHOOD = "fields"  # factor: weighted position and species losses
LATTICE_LIKELIHOOD = "lattice"  # factor: weighted length and angle losses
#: floor of the posterior scale, so log q(z) stays finite
MIN_SCALE = 1e-4

#: (outputs of NeSF.decode, atoms, queries, data-parallel totals) -> the four unweighted loss terms
LossTerms = Callable[..., dict[str, Tensor]]


class VariationalNeSF(NeSF):
    """NeSF whose encoder also gives a posterior scale; ``encode`` stays the posterior mean."""

    def __init__(self, config: ModelConfig, num_species: int) -> None:
        super().__init__(config, num_species)
        self.scale_head = nn.Linear(config.encoder_head_widths[-1], config.latent_size)

    def posterior(self, atoms: Atoms) -> tuple[Tensor, Tensor]:
        """Loc and scale (B, D) of q(z | structure), in float32 even under autocast."""
        hidden = self.encoder.head[:-1](self.encoder.features(atoms))  # (B, H): the head's last hidden layer
        loc = self.encoder.head[-1](hidden)
        scale = nn.functional.softplus(self.scale_head(hidden).float()) + MIN_SCALE
        return loc.float(), scale


def kl_weight(loss: LossConfig, epoch: int) -> float:
    """The KL weight of a 0-based epoch: ``loss.kl``, reached linearly over ``loss.kl_warmup_epochs``."""
    if loss.kl_warmup_epochs <= 0:
        return loss.kl
    return loss.kl * min(1.0, (epoch + 1) / loss.kl_warmup_epochs)


class VariationalObjective(nn.Module):
    """The negative ELBO of a batch (Pyro's Trace_ELBO, one particle) as a module, so DDP can wrap it.

    Building one clears Pyro's parameter store: one objective per training run.
    """

    #: what forward returns besides the total: the likelihood's four loss terms, then the KL divergence
    loss_names = ("position", "species", "length", "angle", "kl")

    def __init__(self, vae: VariationalNeSF, weights: LossConfig, likelihood: LossTerms) -> None:
        super().__init__()
        if weights.kl <= 0 or weights.kl_warmup_epochs < 0:
            raise UserError(
                f"a variational model needs loss.kl > 0 and loss.kl_warmup_epochs >= 0, got {weights.kl} and "
                f"{weights.kl_warmup_epochs} (for no KL term at all, train the autoencoder: model.variational=false)"
            )
        self.vae = vae
        self.weights = weights
        self.likelihood = likelihood
        self.elbo = Trace_ELBO(num_particles=1, max_plate_nesting=1)  # the nesting given: no probing run
        pyro.clear_param_store()

    def kl_weight(self, epoch: int) -> float:
        """The KL weight of a 0-based epoch, warm-up included (this module's kl_weight)."""
        return kl_weight(self.weights, epoch)

    def history_columns(self, epoch: int) -> dict[str, float]:
        """The KL weight of a 0-based epoch, which changes during the warm-up."""
        return {"kl_weight": self.kl_weight(epoch)}

    def model(
        self, atoms: Atoms, queries: Queries, kl_scale: float = 1.0, totals: tuple[int, int, int] | None = None
    ) -> dict[str, Tensor]:
        """p(z) = N(0, I) per structure; the weighted losses of the decoded z as log-likelihood factors."""
        pyro.module(MODULE, self.vae)
        count, size = atoms.num_structures, self.vae.config.latent_size
        zeros = atoms.lengths.new_zeros(count, size, dtype=torch.float32)
        with pyro.plate(STRUCTURES, count), poutine.scale(scale=kl_scale):
            z = pyro.sample(LATENT, dist.Normal(zeros, 1.0).to_event(1))  # (B, D)
        terms = self.likelihood(self.vae.decode(z, queries), atoms, queries, totals)
        w = self.weights
        pyro.factor(FIELD_LIKELIHOOD, -(w.position * terms["position"] + w.species * terms["species"]))
        pyro.factor(LATTICE_LIKELIHOOD, -(w.length * terms["length"] + w.angle * terms["angle"]))
        return terms

    def guide(
        self, atoms: Atoms, queries: Queries, kl_scale: float = 1.0, totals: tuple[int, int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """q(z | structure) = N(loc, scale) from the encoder."""
        pyro.module(MODULE, self.vae)
        loc, scale = self.vae.posterior(atoms)
        with pyro.plate(STRUCTURES, atoms.num_structures), poutine.scale(scale=kl_scale):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))
        return loc, scale

    def forward(
        self,
        atoms: Atoms,
        queries: Queries,
        kl_weight: float,
        totals: tuple[int, int, int] | None = None,
        world: int = 1,
    ) -> dict[str, Tensor]:
        """{"total": -ELBO, the four unweighted loss terms, "kl": KL divergence per structure (nats)}.

        In a data-parallel run (``totals`` of the whole batch, ``world`` processes) each share's KL sum
        is multiplied by ``world``, so that averaging gradients over ranks gives the whole batch's sum.
        """
        parts: dict[str, Any] = {}  # what the model and guide return: the loss terms, the posterior

        def model(*args: object) -> None:
            parts["terms"] = self.model(*args)

        def guide(*args: object) -> None:
            parts["posterior"] = self.guide(*args)

        total = self.elbo.differentiable_loss(model, guide, atoms, queries, kl_weight * world, totals)
        loc, scale = parts["posterior"]
        kl = (0.5 * (loc.square() + scale.square() - 1) - scale.log()).sum()  # KL(q || N(0, I)) of the share
        structures = totals[2] if totals is not None else atoms.num_structures
        return {"total": total, **parts["terms"], "kl": kl.detach() * world / structures}
