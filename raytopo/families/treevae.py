"""``treevae``: TreeVAE (Manduchi et al. 2023), a hierarchical clustering VAE whose tree grows while it trains.

Reference: lauramanduchi/treevae (docs/references.md, Diffuse-TreeVAE; the brief ``treevae.md``). The model is
`raytopo.models.treevae.TreeVAE` (nodes keyed by their path). The reference's schedule maps onto the family
contract's stages, each with a fresh optimizer and KL annealing:

1. ``root``: the root and two leaves, every module trained;
2. ``grow1`` .. ``growK``: at the stage's first step the leaf chosen by the reference's growth rule
   (`choose_leaf_to_grow`: effective-leaf stop, batch-size skip, max-depth stop) on the leaf probabilities of
   held batches gets two children. During the stage only the new subtree trains (the children's heads,
   transformations and decoders and the split node's routers) on the frozen tree, the role of the reference's
   SmallTreeVAE, and, as there, only on the batch rows that reach the split leaf with probability at least
   ``min(1/n_eff, 0.5)`` (`split_leaf_rows`). The loss is the whole tree's ELBO on those rows (the frozen terms
   carry no gradient), so the grafted subtree is trained on the objective the final fine-tune optimises. A
   stage whose rule declines to grow trains the whole tree instead;
3. ``finetune``: leaves holding under ``prune_threshold`` of the argmax assignments are pruned one at a time
   (their parent becomes pass-through), then the whole tree trains.

Growth and pruning decide on the leaf probabilities of every rank's batches gathered together, so all ranks
change the tree identically. The tree is in every checkpoint's ``structure`` (with the leaf each grow stage
split), so a resume rebuilds it and loads strictly. Images are trained in [0, 1] (BCE) from data in [-1, 1].

```yaml
model:
  tree: {latent_dim: 8, hidden: 128, encoder_channels: [8, 16, 32], max_depth: 4, recon: bce}
  schedule: {root: 600, grow: 300, grows: 4, finetune: 600}     # steps; they add up to train.steps
  kl_start: 0.0            # alpha = min(1, kl_start + (step in stage + 1) / kl_anneal_steps)
  kl_anneal_steps: 500
  max_leaves: 10
  prune_threshold: 0.01
  decision_batches: 8
  augmentation_weight: 0.0 # > 0: two random views per image and the contrastive term (the reference's w)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from raytopo.config import Checked, from_dict
from raytopo.errors import ConfigError
from raytopo.families.base import (FamilyDefaults, ParamGroup, Stage, StepContext, eval_mode, stage_bounds,
                                   stage_index_at)
from raytopo.models.treevae import (TreeVAE, TreeVAESettings, choose_leaf_to_grow, effective_leaves,
                                    leaves_to_prune)
from raytopo.models.treevae.structure import node_key
from raytopo.models.treevae.views import paired_views


@dataclass(frozen=True)
class TreeSchedule(Checked):
    root: int = 600
    grow: int = 300
    grows: int = 4
    finetune: int = 600

    def __post_init__(self) -> None:
        if min(self.root, self.grow, self.finetune) < 1 or self.grows < 0:
            raise ConfigError(f"expected root, grow, finetune >= 1 and grows >= 0, got {self}")


@dataclass(frozen=True)
class TreeModelConfig(Checked):
    tree: dict[str, Any] = field(default_factory=dict)
    schedule: TreeSchedule = field(default_factory=TreeSchedule)
    kl_start: float = 0.0
    kl_anneal_steps: int = 500
    max_leaves: int = 10
    prune_threshold: float = 0.01
    decision_batches: int = 8
    augmentation_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.augmentation_weight < 0:
            raise ConfigError(f"augmentation_weight: expected >= 0, got {self.augmentation_weight}")
        if not 0 <= self.kl_start <= 1 or self.kl_anneal_steps < 1:
            raise ConfigError("kl_start/kl_anneal_steps: expected 0 <= kl_start <= 1 and kl_anneal_steps >= 1")
        if self.max_leaves < 2 or not 0 <= self.prune_threshold < 0.5 or self.decision_batches < 1:
            raise ConfigError("max_leaves/prune_threshold/decision_batches: expected >= 2, [0, 0.5), >= 1")


@dataclass(frozen=True)
class ParsedTree:
    settings: TreeVAESettings
    config: TreeModelConfig


class TreeVAEFamily(FamilyDefaults):
    """``treevae``: grow-and-prune TreeVAE training as stages (module docstring)."""

    sampler_fields: frozenset[str] = frozenset()   # a VAE decodes a prior draw: only the seed counts

    held_out_splits = ("eval", "judge")   # scored on held-out images by judges trained on their own split

    name = "treevae"

    def parse(self, run: Any) -> ParsedTree:
        config = from_dict(TreeModelConfig, run.model, "model")
        fields = {**config.tree, "image_size": run.data.image_size, "channels": run.data.channels,
                  "contrastive": config.augmentation_weight > 0}
        return ParsedTree(from_dict(TreeVAESettings, fields, "model.tree"), config)

    def setup(self, run: Any) -> dict[str, Any]:
        return {"parsed": self.parse(run), "stages": self.stages(run)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        weights = {"rec": 1.0, "kl": 1.0, "kl_root": 0.0, "kl_nodes": 0.0, "kl_decisions": 0.0}
        return {**weights, "aug": 1.0} if self.parse(run).config.augmentation_weight else weights

    def needs_pool(self, run: Any) -> bool:
        return False

    def stages(self, run: Any) -> list[Stage]:
        schedule = self.parse(run).config.schedule
        grows = [Stage(f"grow{k}", schedule.grow) for k in range(1, schedule.grows + 1)]
        return [Stage("root", schedule.root), *grows, Stage("finetune", schedule.finetune)]

    # --- model and its stages ------------------------------------------------------------------

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> TreeVAE:
        parsed = self.parse(run)
        model = TreeVAE(parsed.settings, (structure or {}).get("tree"))
        # checkpoints written before the grow stages selected rows name a bare leaf: they trained on every row
        model.grown = {stage: entry if isinstance(entry, dict) else {"leaf": entry, "min_probability": 0.0}
                       for stage, entry in (structure or {}).get("grown", {}).items()}
        return model

    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"tree": model.structure(), "grown": dict(getattr(model, "grown", {}))}

    def enter_stage(self, model: TreeVAE, run: Any, stage: Stage, batches: Any) -> TreeVAE:
        """``growK``: split the leaf the growth rule picks; ``finetune``: prune leaves under the threshold."""
        config = self.parse(run).config
        if stage.name.startswith("grow"):
            probabilities = gathered_leaf_probabilities(model, batches, config.decision_batches)
            leaf = choose_leaf_to_grow(probabilities, model.leaf_paths, run.train.batch_size,
                                       model.settings.max_depth, config.max_leaves)
            if leaf is not None:
                n_eff = effective_leaves(probabilities, model.leaf_paths)
                model.grow(leaf)
                model.grown[stage.name] = {"leaf": leaf, "min_probability": min(1.0 / n_eff, 0.5)}
        elif stage.name == "finetune":
            prune_small_leaves(model, batches, config)
        return model

    def parameter_groups(self, model: TreeVAE, run: Any, stage: Stage) -> list[ParamGroup]:
        """The new subtree in a grow stage that split a leaf (the rest of the tree frozen); else everything."""
        grown = getattr(model, "grown", {}).get(stage.name)
        if grown is None:
            return [ParamGroup("tree", list(model.parameters()))]
        leaf = grown["leaf"]
        modules = [model.routers[node_key(leaf)], model.routers_q[node_key(leaf)]]
        for child in (leaf + "0", leaf + "1"):
            key = node_key(child)
            modules += [model.denses[key], model.transformations[key], model.decoders[key]]
        return [ParamGroup("subtree", [p for module in modules for p in module.parameters()])]

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: TreeVAE, batch: Mapping[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        """Per-sample ELBO terms; ``kl`` = alpha (kl_root + kl_nodes + kl_decisions) with the stage's anneal.

        With ``augmentation_weight`` w > 0 the batch becomes two random views of each image
        (`raytopo.models.treevae.views`) and ``aug`` = w * the contrastive term (the reference's
        ``aug_decisions_weight``; its CIFAR configuration uses 100)."""
        parsed: ParsedTree = ctx.extras["parsed"]
        stages = ctx.extras["stages"]
        index = stage_index_at(stages, ctx.step)
        step_in_stage = ctx.step - stage_bounds(stages)[index][0]
        alpha = min(1.0, parsed.config.kl_start + (step_in_stage + 1) / parsed.config.kl_anneal_steps)
        freeze_batch_norms(model)
        images = to_unit(batch["image"])
        grown = getattr(model, "grown", {}).get(stages[index].name)
        if grown is not None:
            images = images[split_leaf_rows(model, images, grown["leaf"], grown["min_probability"])]
        weight = parsed.config.augmentation_weight
        if weight:
            images = paired_views(images, ctx.generator)
        terms = model(images, generator=ctx.generator, paired_views=bool(weight))
        kl = terms["kl_root"] + terms["kl_nodes"] + terms["kl_decisions"]
        out = {"rec": terms["rec"], "kl": alpha * kl, "kl_root": terms["kl_root"].detach(),
               "kl_nodes": terms["kl_nodes"].detach(), "kl_decisions": terms["kl_decisions"].detach()}
        if weight:
            out["aug"] = weight * terms["aug"]
        return out

    # --- sampling ------------------------------------------------------------------------------

    def sampling_conditions(self, run: Any) -> str:
        return "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def sample(self, model: TreeVAE, run: Any, n: int, cond: Mapping[str, Tensor], settings: Any) -> Tensor:
        """``n`` images in [-1, 1]: a root sample routed by p, decoded by its most probable leaf (the sampler
        settings give only the seed: a TreeVAE is not a diffusion model)."""
        images, probabilities = generate(model, n, settings.seed)
        return from_unit(images[torch.arange(n), probabilities.argmax(dim=1)])

    def preview(self, model: TreeVAE, run: Any) -> dict[str, tuple[Tensor, list[str] | None]]:
        """Four samples per leaf (rows: leaves, captioned with path and share of the held-out data), held-out
        images above their most probable reconstruction (captioned with that leaf and its probability) and the
        tree picture."""
        from raytopo.data.sources import held_out_arrays

        images = torch.from_numpy(held_out_arrays(run.data, 256)["image"])
        shares = leaf_shares(model, images)
        samples, _ = generate(model, 4, seed=0)
        rows = from_unit(samples.transpose(0, 1).flatten(0, 1))
        captions = [f"{path or 'root'} {share:.0%}" for path, share in zip(model.leaf_paths, shares)
                    for _ in range(4)]
        reconstructions, leaves, probabilities = reconstruct(model, images[:8])
        labels = [""] * 8 + [f"{model.leaf_paths[leaf] or 'root'} {p:.2f}"
                             for leaf, p in zip(leaves.tolist(), probabilities.tolist())]
        picture = torch.from_numpy(tree_image(model, samples, shares)).permute(2, 0, 1)[None].float() / 127.5 - 1
        return {"leaves": (rows, captions), "reconstructions": (torch.cat([images[:8], reconstructions]), labels),
                "tree": (picture, None)}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate_model(self, model: TreeVAE, run: Any, settings: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """Clustering of ``per_count x 10`` held-out images by their most probable leaf against their classes
        (``acc`` Hungarian, ``nmi``, ``ari``, ``leaf_purity``, ``dendrogram_purity``), the same scores of a
        k-means baseline on the same pixels with as many clusters as leaves (``kmeans_acc``, ``kmeans_nmi``),
        the held-out ``rec`` (per-image BCE / squared error of the q-weighted reconstruction) and ``leaves``."""
        from raytopo.data.sources import held_out_arrays
        from raytopo.eval.tree_clustering import clustering_scores, flat_scores, kmeans_baseline

        arrays = held_out_arrays(run.data, per_count * 10)
        images = torch.from_numpy(arrays["image"])
        terms = evaluate_terms(model, images)
        labels = arrays.get("label", np.zeros(len(images), dtype=np.int64))
        paths = [model.leaf_paths[i] for i in terms["leaf_probabilities"].argmax(dim=1).tolist()]
        scores = clustering_scores(labels, paths) if len(set(labels.tolist())) > 1 else _no_classes()
        clusters = kmeans_baseline(arrays["image"].reshape(len(images), -1), len(model.leaf_paths), seed=0)
        baseline = flat_scores(labels, clusters) if len(set(labels.tolist())) > 1 else _no_classes()
        generations = generation_scores(model, run, labels, paths) if "label" in arrays else {}
        return {**scores, "kmeans_acc": baseline["acc"], "kmeans_nmi": baseline["nmi"],
                "rec": float(terms["rec"].mean()), "leaves": float(len(model.leaf_paths)), **generations}

    def metric_names(self, run: Any) -> set[str]:
        return {"acc", "nmi", "ari", "leaf_purity", "dendrogram_purity", "kmeans_acc", "kmeans_nmi", "rec",
                "leaves", "sample_purity", "sample_agreement", "judge_accuracy"}


GENERATIONS_PER_LEAF = 64


def leaf_class_histograms(model: TreeVAE, classifier: Any, n: int, seed: int = 0) -> np.ndarray:
    """``[L, K]`` counts: the classes a judge assigns to ``n`` generated images of each leaf (every leaf decodes
    the same ``n`` root samples, p-routed down; the reference's per-leaf ResNet-50 histograms, with a classifier
    raytopo trains on the training images instead of downloaded weights)."""
    images, _ = generate(model, n, seed)
    histograms = np.zeros((images.shape[1], classifier.num_classes), dtype=np.int64)
    for leaf in range(images.shape[1]):
        predicted = classifier.predict(from_unit(images[:, leaf])).cpu().numpy()
        histograms[leaf] = np.bincount(predicted, minlength=classifier.num_classes)
    return histograms


def generation_scores(model: TreeVAE, run: Any, labels: np.ndarray, paths: list[str]) -> dict[str, float]:
    """``sample_purity``: the mean over leaves of the share of the leaf's generations in its most frequent class
    (`leaf_class_histograms`); ``sample_agreement``: the share of leaves holding held-out data whose generations'
    most frequent class is the most frequent class of the held-out images routed to them; ``judge_accuracy``:
    the classifier's held-out accuracy on real images, the ceiling of both."""
    from raytopo.data.sources import class_names
    from raytopo.families.latent import trained_classifier

    names = class_names(run.data)
    classes = len(names) if names else int(labels.max()) + 1
    classifier, accuracy = trained_classifier(run.data, classes)
    histograms = leaf_class_histograms(model, classifier, GENERATIONS_PER_LEAF)
    purity = float((histograms.max(axis=1) / histograms.sum(axis=1)).mean())
    routed = np.asarray(paths)
    agree = [histograms[i].argmax() == np.bincount(labels[routed == path], minlength=classes).argmax()
             for i, path in enumerate(model.leaf_paths) if path in paths]
    return {"sample_purity": purity, "sample_agreement": float(np.mean(agree)) if agree else 0.0,
            "judge_accuracy": float(accuracy)}


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] data -> [0, 1], the range of the TreeVAE's sigmoid decoders and BCE."""
    return (images + 1) / 2


def from_unit(images: Tensor) -> Tensor:
    """TreeVAE decoder images -> raytopo's [-1, 1] image range (clamped: ``mse`` decoders are unbounded)."""
    return images.clamp(0, 1) * 2 - 1


def freeze_batch_norms(model: torch.nn.Module) -> None:
    """Batch norms whose parameters are frozen run in eval mode, so a grow stage leaves the frozen tree's
    running statistics alone (the reference trains its SmallTreeVAE on the tree in eval mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.train(model.training and module.weight.requires_grad)


@torch.no_grad()
def split_leaf_rows(model: TreeVAE, images: Tensor, leaf: str, min_probability: float) -> Tensor:
    """Indices of the batch rows a grow stage trains on: those whose q-routing probability of reaching the split
    leaf is at least ``min_probability`` (the reference's ``min(1 / n_eff, 0.5)``, ``get_ind_small_tree``), and
    never fewer than the two most probable rows (batch norm needs two).

    Training the new subtree on the leaf's own data matters: on whole batches, whose other rows carry P ~ 0,
    the new router and decoders' batch norms see every leaf's data and one child wins every sample (measured on
    garments: 3 of 4 seeds collapsed within 50 steps; on the leaf's rows all 4 split)."""
    probability = model.node_probability(images, leaf)
    rows = torch.nonzero(probability >= min_probability)[:, 0]
    return rows if len(rows) >= 2 else probability.topk(min(2, len(images))).indices


@torch.no_grad()
def evaluate_terms(model: TreeVAE, images: Tensor, batch: int = 256) -> dict[str, Tensor]:
    """q-routing leaf probabilities and per-image reconstruction terms of ``images`` in [-1, 1], eval mode,
    posterior means."""
    with eval_mode(model):
        parts = [model(to_unit(images[i:i + batch]), sample=False) for i in range(0, len(images), batch)]
    return {key: torch.cat([part[key] for part in parts]) for key in ("leaf_probabilities", "rec")}


def gathered_leaf_probabilities(model: TreeVAE, batches: Any, count: int) -> np.ndarray:
    """Leaf probabilities [N, L] of ``count`` batches from every rank, concatenated in rank order (the same
    array on every rank, so growth and pruning decide identically)."""
    import torch.distributed as dist

    rows = [evaluate_terms(model, next(batches)["image"])["leaf_probabilities"].cpu() for _ in range(count)]
    local = torch.cat(rows).numpy()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return np.concatenate(gathered)


def prune_small_leaves(model: TreeVAE, batches: Any, config: TreeModelConfig) -> None:
    """Prune, one at a time, the leaf with the fewest argmax samples while it holds under the threshold."""
    from raytopo.errors import InputError

    while len(model.leaf_paths) > 2:
        probabilities = gathered_leaf_probabilities(model, batches, config.decision_batches)
        candidates = leaves_to_prune(probabilities, model.leaf_paths, config.prune_threshold)
        if not candidates:
            return
        try:
            model.prune(candidates[0])
        except InputError:
            return


@torch.no_grad()
def generate(model: TreeVAE, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(images [n, L, C, H, W] in [0, 1], p-routing leaf probabilities [n, L]) from ``seed``, eval mode."""
    with eval_mode(model):
        return model.generate(n, torch.Generator().manual_seed(seed))


def leaf_shares(model: TreeVAE, images: Tensor) -> list[float]:
    """The fraction of ``images`` whose most probable leaf is each leaf."""
    probabilities = evaluate_terms(model, images)["leaf_probabilities"]
    counts = torch.bincount(probabilities.argmax(dim=1), minlength=probabilities.shape[1])
    return (counts.float() / len(images)).tolist()


@torch.no_grad()
def reconstruct(model: TreeVAE, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's reconstruction by its most probable leaf, in [-1, 1], with that leaf's index and q-routing
    probability ``[B]`` (posterior means, eval mode)."""
    with eval_mode(model):
        terms = model(to_unit(images), sample=False)
    probability, best = terms["leaf_probabilities"].max(dim=1)
    return from_unit(terms["reconstructions"][torch.arange(len(images)), best]), best, probability


def tree_image(model: TreeVAE, samples: Tensor, shares: list[float]) -> np.ndarray:
    """The learned tree (`raytopo.eval.tree_picture`): under each leaf two of its samples, stacked, and its share."""
    from raytopo.eval.tree_picture import tree_picture

    thumbnails = {}
    for column, path in enumerate(model.leaf_paths):
        pair = samples[:2, column].clamp(0, 1).cpu()                     # [2, C, H, W]
        stacked = torch.cat(list(pair), dim=1).permute(1, 2, 0).numpy()  # [2H, W, C]
        thumbnails[path] = stacked[..., 0] if stacked.shape[-1] == 1 else stacked
    return tree_picture(model.node_paths(), thumbnails, dict(zip(model.leaf_paths, shares)))


def _no_classes() -> dict[str, float]:
    return {"acc": 0.0, "nmi": 0.0, "ari": 0.0, "leaf_purity": 0.0, "dendrogram_purity": 0.0}
