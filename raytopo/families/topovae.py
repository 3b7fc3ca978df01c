"""``topovae``: Topo-GEN's topologically regularised VAE, trained side by side with a plain VAE.

Reference: Topo-GEN ``topovae_experiments.py`` (docs/references.md, Topo-GEN A.5). A plain VAE and a
TopoVAE start from identical weights (`raytopo.models.topovae.VAEPair`) and see the same batches and the same
reparameterisation noise; the TopoVAE's loss adds the point-cloud topological regularisers of A.4
(`raytopo.topology.regularisers.TopologicalRegulariser`). The ``model:`` section of a run config:

```yaml
model:
  vae: {n_latent: 10, c1: 32, c2: 64, hidden: 256, recon: bce}        # recon: bce | mse
  topo: {weights: [10, 10, 10, 10, 0, 0, 0], maxdim: 1, backend: giotto, space: outputs,
         pers0_delta: 0.001, ...}                                        # any TopoRegulariserConfig field
  # weights may also be a mapping, e.g. {bottleneck0: 10, persentropy1: 5} (names left out weigh 0)
  compare: true                                                           # false: train only the TopoVAE
```

**Loss and weighting.** The reference minimises, per batch of B images, ``(BCE_sum + KLD_sum) / B`` for the
VAE and ``(BCE_sum + KLD_sum + topo) / B`` for the TopoVAE, where ``topo = sum_i w_i loss_i`` over the seven
weighted regularisers. The trainer minimises ``sum_term weight_term * mean_b term[b]``; this family returns
per-sample terms ``vae_rec``, ``vae_kl``, ``topovae_rec``, ``topovae_kl`` (sums over pixels / latent dims of
sample b) and ``topo[b] = topo / B`` for every b, all with weight 1. Their batch means are ``BCE_sum / B``,
``KLD_sum / B`` and ``topo / B``: exactly the reference's two losses, summed (the parameter sets are
disjoint, so the sum trains each model on its own loss). With ``train.microbatches: m`` each micro-batch is
its own point cloud of B/m points, as if the reference ran with batch B/m. The unweighted value of every
active regulariser is also returned as ``topo_<name>`` (weight 0: logged, not optimised).

**Point clouds (A.1).** Each batch element is one point. ``space: outputs`` (the reference) compares the cloud
of TopoVAE reconstructions (B x pixels) with the cloud of input images, both in [0, 1]. ``space: latents``
(the reference README's figure; its code never did it) compares the cloud of latent means ``mu`` (B x
n_latent) with the input images' cloud. The two live at unrelated scales, so each cloud is first divided by
its own mean pairwise distance: Rips diagrams scale with the cloud (``dgm(cX) = c dgm(X)``) and their
generators do not change, so this compares the *shape* of the two clouds and not their units; the mean over
all pairs is differentiable and, unlike the diameter or a single longest edge, not driven by one outlier. The
normalisation keeps its gradient (the loss is a function of the normalised latent cloud); the latent scale
itself stays governed by the KL term. In that mode distances are about 1, so the density parameters
(``density_maxrange`` 35 by default, meant for pixel distances) should be set accordingly (e.g. 3).

**Diagrams.** The ground-truth diagrams are computed from the very batch being trained on: the true cloud is
submitted to the ``PersistencePool`` before the forward pass (it runs while the forward pass does), so the
reference's shuffle/diagram mismatch (A.5) cannot happen. The generated cloud's diagram is submitted after the
forward pass; the ``topo`` term is `Pending` until both come back, and gradient then flows through
``live_diagram``'s gathering of generator edge lengths (A.3).

**Gradient clipping.** The VAE and the TopoVAE are separate parameter groups (`parameter_groups`), and the
trainer clips each group on its own norm, so ``train.grad_clip`` never couples the two models. The reference
has no clipping; the shipped config keeps ``grad_clip: null`` to match it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch

from raytopo.config import Checked, from_dict
from raytopo.errors import ConfigError, InputError
from raytopo.families.base import FamilyDefaults, ParamGroup, Pending, Stage, StepContext
from raytopo.models.topovae.vae import VAEConfig, VAEPair, kl_divergence, reconstruction_loss
from raytopo.topology.distances import bottleneck_matching
from raytopo.topology.regularisers import LOSS_NAMES, TopologicalRegulariser, TopoRegulariserConfig, flatten_cloud
from raytopo.topology.rips import rips_persistence

REFERENCE_WEIGHTS: tuple[float, ...] = (10, 10, 10, 10, 0, 0, 0)   # topovae_experiments.py CLI default
SPACES = ("outputs", "latents")
RECONSTRUCTIONS = ("bce", "mse")
PREVIEW_EXAMPLES = {True: 12, False: 8}   # fills a square grid of (input, vae, topovae) triplets / pairs
PREVIEW_PRIOR = 16


@dataclass(frozen=True)
class TopoVAEModelConfig(Checked):
    """The ``model:`` section as written; ``topo`` is parsed into `ParsedTopoVAE` (TopoRegulariserConfig + space)."""

    vae: dict[str, Any] = field(default_factory=dict)     # VAEConfig fields (size/channels from data) + recon
    topo: dict[str, Any] = field(default_factory=dict)
    compare: bool = True


@dataclass(frozen=True)
class ParsedTopoVAE:
    """Fully validated settings of a topovae run."""

    network: VAEConfig
    recon: Literal["bce", "mse"]
    topo: TopoRegulariserConfig
    space: Literal["outputs", "latents"]
    compare: bool

    @property
    def topo_active(self) -> bool:
        return any(weight > 0 for weight in self.topo.weights)

    @property
    def active_losses(self) -> tuple[str, ...]:
        return tuple(name for name, weight in zip(LOSS_NAMES, self.topo.weights) if weight > 0)

    @property
    def model_names(self) -> tuple[str, ...]:
        return ("vae", "topovae") if self.compare else ("topovae",)


def parse_topo(section: Mapping[str, Any]) -> tuple[TopoRegulariserConfig, str]:
    """``model.topo`` -> (regulariser config with the reference's default weights, cloud space)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"model.topo: expected a mapping, got {type(section).__name__}")
    fields_ = dict(section)
    space = fields_.pop("space", "outputs")
    if space not in SPACES:
        raise ConfigError(f"model.topo.space: expected one of {', '.join(SPACES)}, got {space!r}")
    fields_["weights"] = weights_tuple(fields_.get("weights", REFERENCE_WEIGHTS))
    config = from_dict(TopoRegulariserConfig, fields_, "model.topo")
    return config, space


def weights_tuple(weights: Any) -> Any:
    """``model.topo.weights`` as the 7-tuple in LOSS_NAMES order: a list as is, or a mapping ``{name: weight}``
    (names left out weigh 0), the form a Tune space searches one weight at a time
    (``model.topo.weights.bottleneck0``)."""
    if not isinstance(weights, Mapping):
        return weights
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise ConfigError(f"model.topo.weights.{unknown[0]}: unknown regulariser; expected {', '.join(LOSS_NAMES)}")
    return tuple(weights.get(name, 0.0) for name in LOSS_NAMES)


class TopoVAEFamily(FamilyDefaults):
    """The ``topovae`` family (see the module docstring for the loss, clouds and diagrams)."""

    sampler_fields: frozenset[str] = frozenset()   # a VAE decodes a prior draw: only the seed counts

    name = "topovae"

    # --- configuration -------------------------------------------------------------------------

    def parse(self, run: Any) -> ParsedTopoVAE:
        model = from_dict(TopoVAEModelConfig, run.model, "model")
        topo, space = parse_topo(model.topo)
        if run.data.image_size % 4:
            raise ConfigError(f"data.image_size: the topovae network needs a multiple of 4, got {run.data.image_size}")
        network_fields = dict(model.vae)
        recon = network_fields.pop("recon", "bce")
        if recon not in RECONSTRUCTIONS:
            raise ConfigError(f"model.vae.recon: expected one of {', '.join(RECONSTRUCTIONS)}, got {recon!r}")
        network = from_dict(VAEConfig, {**network_fields, "image_size": run.data.image_size,
                                        "in_channels": run.data.channels}, "model.vae")
        return ParsedTopoVAE(network, recon, topo, space, model.compare)

    def setup(self, run: Any) -> dict[str, Any]:
        parsed = self.parse(run)
        return {"parsed": parsed, "regulariser": TopologicalRegulariser(parsed.topo)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        """Weight 1 for every VAE term and for ``topo`` (so the sum is the reference's loss); 0 (logged only)
        for the raw ``topo_<name>`` values."""
        parsed = self.parse(run)
        weights = {f"{model}_{term}": 1.0 for model in parsed.model_names for term in ("rec", "kl")}
        if parsed.topo_active:
            weights["topo"] = 1.0
            weights.update({f"topo_{name}": 0.0 for name in parsed.active_losses})
        return weights

    def needs_pool(self, run: Any) -> bool:
        return self.parse(run).topo_active

    def parameter_groups(self, model: torch.nn.Module, run: Any, stage: Stage) -> list[ParamGroup]:
        """One group per model (VAE, TopoVAE): each is clipped on its own norm, so the pair stays independent."""
        return [ParamGroup(name, list(network.parameters())) for name, network in model.models().items()]

    def sampling_conditions(self, run: Any) -> str:
        """``none``: decodings of the prior."""
        return "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, torch.Tensor]:
        return {}

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> VAEPair:
        parsed = self.parse(run)
        return VAEPair(parsed.network, compare=parsed.compare)

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict:
        """Per-sample ``<model>_rec``, ``<model>_kl`` and the TopoVAE's pending ``topo`` (+ ``topo_<name>``)."""
        parsed: ParsedTopoVAE = ctx.extras["parsed"]
        images = to_unit(batch["image"])
        truth = true_future = None
        if parsed.topo_active:
            truth = true_cloud(images, parsed.space)
            true_future = submit_diagrams(ctx.pool, truth, parsed.topo)   # runs while the forward pass does
        noise = torch.randn(images.shape[0], parsed.network.n_latent, device=images.device,
                            dtype=images.dtype, generator=ctx.generator)
        outputs = model(images, noise)
        terms: dict[str, Any] = {}
        for name, output in outputs.items():
            terms[f"{name}_rec"] = reconstruction_loss(output.reconstruction, images, parsed.recon)
            terms[f"{name}_kl"] = kl_divergence(output.mu, output.logvar)
        if parsed.topo_active:
            generated = generated_cloud(outputs["topovae"], parsed.space)
            generated_future = submit_diagrams(ctx.pool, generated.detach(), parsed.topo)
            terms.update(pending_topo_terms(ctx.extras["regulariser"], generated, truth, generated_future,
                                            true_future, parsed.active_losses))
        return terms

    # --- sampling, previews, evaluation ---------------------------------------------------------

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, run: Any, n: int, cond: Mapping[str, torch.Tensor],
               settings: Any) -> torch.Tensor:
        """``n`` TopoVAE decodings of ``z ~ N(0, I)`` in [-1, 1] (seed ``settings.seed``; other settings unused)."""
        return from_unit(decode_prior(model.topovae, n, getattr(settings, "seed", 0)))

    def evaluate(self, samples: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Topology distance between the cloud of ``samples`` and the cloud of ``cond["image"]`` (both [-1, 1]):
        bottleneck distances of their H0 and H1 Rips diagrams (finite points), computed in [0, 1] units."""
        if "image" not in cond:
            raise InputError("topovae evaluate: expected cond['image'], the reference images to compare with")
        distances = cloud_bottleneck(to_unit(samples), to_unit(cond["image"]), maxdim=1, backend="giotto")
        return {f"bottleneck{dim}": value for dim, value in enumerate(distances)}

    @torch.no_grad()
    def preview(self, model: torch.nn.Module, run: Any) -> dict[str, tuple[torch.Tensor, list[str] | None]]:
        """``reconstructions``: held-out inputs next to their (mean-latent) reconstructions by each model;
        ``prior_<model>``: decodings of the same ``z ~ N(0, I)`` by each model."""
        parsed = self.parse(run)
        device = next(model.parameters()).device
        images = evaluation_images(run.data, PREVIEW_EXAMPLES[parsed.compare]).to(device)
        outputs = model(images, torch.zeros(len(images), parsed.network.n_latent, device=device))
        columns = [images] + [outputs[name].reconstruction for name in parsed.model_names]
        grid = torch.stack(columns, dim=1).flatten(0, 1)
        captions = [label for _ in images for label in ("input",) + parsed.model_names]
        result = {"reconstructions": (from_unit(grid), captions)}
        for name, network in model.models().items():
            result[f"prior_{name}"] = (from_unit(decode_prior(network, PREVIEW_PRIOR, seed=0)), None)
        return result

    @torch.no_grad()
    def evaluate_model(self, model: torch.nn.Module, run: Any, sampler: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """On ``per_count`` held-out batches of ``batch_size`` images (each batch one point cloud), per model:
        ``<model>_bce`` (BCE per sample, mean), ``<model>_kl``, ``<model>_bottleneck0/1`` (Rips bottleneck
        distance between the reconstructions' and the inputs' clouds); ``bce_ratio`` = topovae / vae; with class
        labels, ``<model>_latent_nmi`` (k-means of the latent means, NMI against the classes: do the latents
        organise by class). Reconstructions decode the latent mean. ``sampler`` is unused."""
        parsed = self.parse(run)
        device = next(model.parameters()).device
        images = evaluation_images(run.data, per_count * batch_size)
        totals: dict[str, float] = {}
        latents: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            outputs = model(batch, torch.zeros(len(batch), parsed.network.n_latent, device=device))
            for name, output in outputs.items():
                latents.setdefault(name, []).append(output.mu.detach().cpu().numpy())
                scores = {"bce": reconstruction_loss(output.reconstruction, batch, "bce").mean().item(),
                          "kl": kl_divergence(output.mu, output.logvar).mean().item()}
                distances = cloud_bottleneck(output.reconstruction, batch, parsed.topo.maxdim, parsed.topo.backend)
                scores.update({f"bottleneck{dim}": value for dim, value in enumerate(distances)})
                for key, value in scores.items():
                    totals[f"{name}_{key}"] = totals.get(f"{name}_{key}", 0.0) + value * len(batch) / len(images)
        if parsed.compare:
            totals["bce_ratio"] = totals["topovae_bce"] / totals["vae_bce"]
        if run.data.has_classes:
            from raytopo.eval.clustering import latent_class_nmi

            labels = evaluation_labels(run.data, len(images))
            for name, means in latents.items():
                totals[f"{name}_latent_nmi"] = latent_class_nmi(np.concatenate(means), labels)
        return totals

    def metric_names(self, run: Any) -> set[str]:
        parsed = self.parse(run)
        keys = ["bce", "kl"] + [f"bottleneck{dim}" for dim in range(parsed.topo.maxdim + 1)]
        keys += ["latent_nmi"] if run.data.has_classes else []
        names = {f"{model}_{key}" for model in parsed.model_names for key in keys}
        return names | ({"bce_ratio"} if parsed.compare else set())


# --- point clouds and the topology term ---------------------------------------------------------------------


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] batch images -> [0, 1] (the reference's pixel range, what BCE needs)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def from_unit(images: torch.Tensor) -> torch.Tensor:
    return images * 2.0 - 1.0


def scale_normalised(cloud: torch.Tensor) -> torch.Tensor:
    """``cloud / mean pairwise distance`` (differentiable); a cloud of identical points is returned unchanged."""
    scale = torch.pdist(cloud).mean() if len(cloud) > 1 else cloud.new_ones(())
    return cloud / torch.where(scale > 0, scale, torch.ones_like(scale))


def true_cloud(images: torch.Tensor, space: str) -> torch.Tensor:
    """The input batch as a (constant) cloud ``[B, pixels]``, scale-normalised in latents mode."""
    cloud = flatten_cloud(images.detach())
    return scale_normalised(cloud) if space == "latents" else cloud


def generated_cloud(output: Any, space: str) -> torch.Tensor:
    """The TopoVAE's live cloud: its reconstructions ``[B, pixels]`` or its normalised latent means ``[B, n_latent]``."""
    if space == "latents":
        return scale_normalised(output.mu)
    return flatten_cloud(output.reconstruction)


def submit_diagrams(pool: Any, cloud: torch.Tensor, config: TopoRegulariserConfig) -> Any:
    """Start the Rips diagrams of one cloud on the pool (one item: the whole cloud); ``.result()[0]`` is them."""
    if pool is None:
        raise InputError("topovae: the topology term needs ctx.pool (a PersistencePool); none was given")
    array = cloud.detach().float().cpu().numpy()[None]
    return pool.submit(array, fn=rips_persistence, maxdim=config.maxdim, backend=config.backend)


def topo_terms(regulariser: TopologicalRegulariser, points: torch.Tensor, true_points: torch.Tensor,
               diagrams: Any, true_diagrams: Any) -> dict[str, torch.Tensor]:
    """``{"topo": [B] each sum_i w_i loss_i / B, name: [B] raw loss_i (detached)}`` of one cloud of B points.

    ``topo`` sums the weighted losses whose ``gotloss`` is True (Topo-GEN ``TopologicalLoss.compute_loss``);
    its batch mean is the reference's ``topo / B``.
    """
    count = points.shape[0]
    weight_of = dict(zip(LOSS_NAMES, regulariser.config.weights))
    total = points.new_zeros(())
    raw: dict[str, torch.Tensor] = {}
    for name, (value, gotloss) in regulariser.terms(points, true_points, diagrams, true_diagrams).items():
        if gotloss:
            total = total + weight_of[name] * value
        raw[name] = value.detach().to(points.dtype).expand(count)
    return {"topo": (total / count).expand(count), **raw}


def pending_topo_terms(regulariser: TopologicalRegulariser, points: torch.Tensor, true_points: torch.Tensor,
                       future: Any, true_future: Any, names: tuple[str, ...]) -> dict[str, Pending]:
    """``topo`` and ``topo_<name>`` as `Pending` terms sharing one evaluation once both diagrams are back."""

    @functools.cache
    def resolved() -> dict[str, torch.Tensor]:
        return topo_terms(regulariser, points, true_points.to(points.dtype), future.result()[0],
                          true_future.result()[0])

    pending = {"topo": Pending(lambda: resolved()["topo"])}
    for name in names:
        pending[f"topo_{name}"] = Pending(lambda name=name: resolved()[name])
    return pending


def cloud_bottleneck(generated: torch.Tensor, reference: torch.Tensor, maxdim: int, backend: str) -> list[float]:
    """Bottleneck distance between the finite Rips diagrams of two clouds, for each dim 0..maxdim."""
    first = rips_persistence(flatten_cloud(generated).detach().double().cpu().numpy(), maxdim, backend)
    second = rips_persistence(flatten_cloud(reference).detach().double().cpu().numpy(), maxdim, backend)
    return [float(bottleneck_matching(a.finite(), b.finite()).cost) for a, b in zip(first, second)]


def decode_prior(network: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` decodings in [0, 1] of ``z ~ N(0, I)`` drawn from ``seed`` (same z for any network of that size)."""
    parameter = next(network.parameters())
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, network.config.n_latent, generator=generator).to(parameter.device, parameter.dtype)
    return network.decode(z)


# --- evaluation data ----------------------------------------------------------------------------------------


def evaluation_images(data: Any, n: int) -> torch.Tensor:
    """``n`` images ``[n, C, S, S]`` in [0, 1] for previews and evaluation.

    The shared held-out split (`raytopo.data.sources.held_out_arrays`): new draws of a generated source; the
    last ``n`` images of files, which are training images (point ``data.path`` at a test split).
    """
    return to_unit(torch.tensor(_evaluation_array(data, n)))


def evaluation_labels(data: Any, n: int) -> np.ndarray:
    """The class labels of `evaluation_images` (same held-out split, same order)."""
    return _evaluation_arrays(data, n)["label"]


def _evaluation_array(data: Any, n: int) -> np.ndarray:
    return _evaluation_arrays(data, n)["image"]


@functools.lru_cache(maxsize=8)
def _evaluation_arrays(data: Any, n: int) -> dict[str, np.ndarray]:
    from raytopo.data.sources import held_out_arrays

    arrays = held_out_arrays(data, n)
    for array in arrays.values():
        array.setflags(write=False)
    return arrays
