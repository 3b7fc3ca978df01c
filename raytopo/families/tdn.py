"""TopoDiffusionNet's three models as one family class: ``adm``, ``adm_t`` and ``tdn`` (docs/references.md, TDN 1).

* ``adm``: unconditional improved-diffusion UNet (L_simple + L_vlb with learned sigma, cosine schedule);
* ``adm_t``: the same conditioned on the topological count c;
* ``tdn``: ``adm_t`` plus lambda * L_topo on the predicted clean image (Gupta et al. 2025, eq. 6:
  L = L_simple + lambda L_topo), with the persistence work done by the PersistencePool.

The ``model:`` section of a run config:

```yaml
model:
  unet: {model_channels: 32, num_res_blocks: 1, attention_resolutions: [8], ...}   # UNetConfig fields
  diffusion: {steps: 1000, schedule: cosine, var_type: learned_range}              # DiffusionConfig fields
  topo: {weight: 1.0e-5, dims: [0], birth: true, death: true, noisy: false, selection: match}   # tdn only
```
``unet.image_size`` and ``unet.in_channels`` come from the data section. Unlike the reference, L_topo is kept
when the variance is not learned (docs/references.md, TDN 2.9 item 1), and ``weight_timestep`` (Min-SNR) is
``topo.min_snr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch

from raytopo.config import Checked, from_dict
from raytopo.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from raytopo.diffusion.respace import build_diffusion
from raytopo.errors import ConfigError
from raytopo.families.base import FamilyDefaults, Pending, StepContext
from raytopo.models.adm.unet import UNetConfig, UNetModel
from raytopo.topology.losses import TDNLossConfig, critical_targets, gather_loss


@dataclass(frozen=True)
class TopoSettings(Checked):
    """L_topo switches (reference flags: --weight_topo, --topo_dim, --topo_birth/death/noisy).

    Beyond the reference: ``warmup_steps`` ramps the weight linearly from 0 over the first steps of the run (at the
    start of fine-tuning the L_topo gradient can dwarf L_simple's); ``min_t`` / ``max_t`` apply L_topo only at
    diffusion steps min_t <= t < max_t (null: no bound, as the reference).
    """

    weight: float = 1e-5
    min_snr: float | None = None
    dims: tuple[int, ...] = (0,)
    birth: bool = True
    death: bool = True
    noisy: bool = False
    selection: Literal["match", "count"] = "match"
    warmup_steps: int = 0
    min_t: int = 0
    max_t: int | None = None

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"model.topo.weight: expected >= 0, got {self.weight}")
        if self.min_snr is not None and not self.min_snr > 0:
            raise ConfigError(f"model.topo.min_snr: expected > 0 or null, got {self.min_snr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"model.topo.warmup_steps: expected >= 0, got {self.warmup_steps}")
        if self.min_t < 0 or (self.max_t is not None and self.max_t <= self.min_t):
            raise ConfigError(f"model.topo.min_t/max_t: expected 0 <= min_t < max_t (or max_t null), "
                              f"got {self.min_t}, {self.max_t}")
        self.loss_config()  # validates dims/selection/birth/death

    def ramp(self, step: int) -> float:
        """The fraction of ``weight`` applied at 0-based ``step`` (linear warm-up)."""
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0

    def loss_config(self) -> TDNLossConfig:
        return TDNLossConfig(dims=self.dims, birth=self.birth, death=self.death, noisy=self.noisy,
                             selection=self.selection)


@dataclass(frozen=True)
class TDNModelConfig(Checked):
    unet: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)
    topo: TopoSettings = field(default_factory=TopoSettings)


# x0 prediction, not the reference's epsilon: an epsilon model's x0 estimate x_t / sqrt(abar) - sqrt(1/abar - 1) eps
# multiplies every error in eps by up to 2e4 at the end of the cosine schedule, so at t >= 950 it is random-sign
# speckle that samplers commit to (docs/tdn.md, "Why x0 prediction").
_TDN_DIFFUSION_DEFAULTS = {"steps": 1000, "schedule": "cosine", "var_type": "learned_range", "mean_type": "x0"}
_UNET_DEFAULTS = {"model_channels": 64, "num_res_blocks": 2, "attention_resolutions": (16,), "learn_sigma": True}


@dataclass(frozen=True)
class ParsedTDN:
    """A family's fully validated settings."""

    unet: UNetConfig
    diffusion: DiffusionConfig
    topo: TopoSettings
    counts_per_image: int


class TDNFamily(FamilyDefaults):
    """``adm`` / ``adm_t`` / ``tdn`` (registered three times with different switches)."""


    held_out_splits = ()   # evaluation counts the topology of samples; it reads no real image

    def __init__(self, name: str, conditioned: bool, topology: bool) -> None:
        self.name = name
        self.conditioned = conditioned
        self.topology = topology

    def augmentations_kept(self, run: Any) -> frozenset[str]:
        """Counts of components and holes survive flips and quarter turns, not crops (a crop can cut a
        component in two or off the image); the unconditional ``adm`` keeps every augmentation."""
        from raytopo.data.augment import AUGMENTATIONS, GEOMETRIC

        return GEOMETRIC if self.conditioned else frozenset(AUGMENTATIONS)

    # --- configuration -------------------------------------------------------------------------

    def parse(self, run: Any) -> ParsedTDN:
        model = from_dict(TDNModelConfig, run.model, "model")
        if self.conditioned and not run.data.has_counts:
            raise ConfigError(
                f"data: family {self.name!r} is conditioned on counts, but source {run.data.source!r} with convention "
                f"{run.data.convention!r} has none; expected source shapes, or folder/parquet with a count convention"
            )
        counts_per_image = 2 if run.data.convention == "two_counts" else 1
        unet_fields = {**_UNET_DEFAULTS, **model.unet, "image_size": run.data.image_size,
                       "in_channels": run.data.channels}
        if self.conditioned:
            if counts_per_image == 2:
                unet_fields.setdefault("two_counts", True)
            else:
                unet_fields.setdefault("count_cond", "linear")
        elif unet_fields.get("count_cond", "none") != "none" or unet_fields.get("two_counts"):
            raise ConfigError(f"model.unet: family {self.name!r} is unconditional; remove count_cond/two_counts")
        unet = from_dict(UNetConfig, unet_fields, "model.unet")
        diffusion = from_dict(DiffusionConfig, {**_TDN_DIFFUSION_DEFAULTS, **model.diffusion}, "model.diffusion")
        if self.topology:
            dims_needed = len(model.topo.dims) if model.topo.selection == "count" else 0
            if dims_needed and counts_per_image != dims_needed:
                raise ConfigError(
                    f"model.topo.dims: selection 'count' needs one count per dim ({dims_needed}), but data "
                    f"convention {run.data.convention!r} gives {counts_per_image}"
                )
        return ParsedTDN(unet, diffusion, model.topo, counts_per_image)

    def setup(self, run: Any) -> dict[str, Any]:
        """Per-run state the trainer hands back in ``StepContext.extras`` (parsed once, not every step)."""
        return {"parsed": self.parse(run), "diffusion": self.diffusion(run)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        weights = {"mse": 1.0, "vb": 1.0}
        if self.topology:
            weights["topo"] = self.parse(run).topo.weight
        return weights

    def needs_pool(self, run: Any) -> bool:
        return self.topology and self.parse(run).topo.weight > 0

    def sampling_conditions(self, run: Any) -> str:
        """``counts`` for adm_t and tdn (target topological counts), ``none`` for the unconditional adm."""
        return "counts" if self.conditioned else "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, torch.Tensor]:
        """Every count of the training range ``per_count`` times (`target_counts`); ``{}`` for adm."""
        return self.target_counts(run, per_count) if self.conditioned else {}

    # --- model ---------------------------------------------------------------------------------

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> UNetModel:
        return UNetModel(self.parse(run).unet)

    def diffusion(self, run: Any, respacing: str = "") -> GaussianDiffusion:
        return build_diffusion(self.parse(run).diffusion, respacing)

    def model_kwargs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.conditioned:
            return {}
        counts = batch["counts"]
        kwargs = {"counts": counts[:, 0] if counts.ndim == 2 and counts.shape[1] == 1 else counts}
        if "object" in batch:
            kwargs["objects"] = batch["object"]
        return kwargs

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict:
        """Per-sample L_simple, L_vlb and (tdn) a pending L_topo whose diagrams are computed on the pool."""
        parsed: ParsedTDN = ctx.extras["parsed"]
        diffusion: GaussianDiffusion = ctx.extras["diffusion"]
        x0 = batch["image"]
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=ctx.generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=ctx.generator)
        x_t = diffusion.q_sample(x0, t, noise=noise)
        output = diffusion.call_model(model, x_t, t, self.model_kwargs(batch))
        terms = diffusion.losses_from_output(output, x0, x_t, t, noise)
        result: dict = {"mse": terms["mse"], "vb": terms["vb"]}
        if self.topology and parsed.topo.weight > 0:
            result["topo"] = self._pending_topo(terms["pred_x0"], batch, t, diffusion, ctx, parsed.topo)
        return result

    def _pending_topo(self, pred_x0: torch.Tensor, batch: Mapping[str, torch.Tensor], t: torch.Tensor,
                      diffusion: GaussianDiffusion, ctx: StepContext, settings: TopoSettings) -> Pending:
        config = settings.loss_config()
        pred = pred_x0.detach().float().cpu().numpy()
        if config.selection == "count":
            reference = batch["counts"].detach().float().cpu().numpy().reshape(len(pred), -1)
        else:
            reference = batch["image"].detach().float().cpu().numpy()
        future = ctx.pool.submit((pred, reference), fn=critical_targets, config=config)
        weight = self._timestep_weight(settings, diffusion, t) * settings.ramp(ctx.step)

        def resolve() -> torch.Tensor:
            return gather_loss(pred_x0, future.result()) * weight

        return Pending(resolve)

    @staticmethod
    def _timestep_weight(settings: TopoSettings, diffusion: GaussianDiffusion, t: torch.Tensor) -> torch.Tensor:
        """Per-sample factor of L_topo: min(SNR_t, k) / SNR_t, the reference's ``--weight_timestep k`` (Min-SNR
        weighting) when ``min_snr`` is set, times 0 for steps outside [min_t, max_t); ones otherwise."""
        weight = torch.ones(t.shape, device=t.device)
        if settings.min_snr is not None:
            abar = torch.as_tensor(diffusion.alphas_cumprod, device=t.device)[t]
            snr = abar / (1 - abar)
            weight = (torch.clamp(snr, max=settings.min_snr) / snr).float()
        inside = t >= settings.min_t
        if settings.max_t is not None:
            inside &= t < settings.max_t
        return weight * inside.float()

    # --- sampling and evaluation ---------------------------------------------------------------

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, run: Any, n: int, cond: Mapping[str, torch.Tensor],
               settings: Any) -> torch.Tensor:
        """``n`` images in [-1, 1] for the target ``cond["counts"]``; ``settings`` is a SamplerSettings."""
        from raytopo.families.sampling import run_sampler

        return run_sampler(self, model, run, n, cond, settings)

    @staticmethod
    def target_counts(run: Any, per_count: int) -> dict[str, torch.Tensor]:
        """Target counts shaped as the run's data, each ``per_count`` times: ``{"counts": [N, k]}``.

        One count: min_count..max_count. Two counts (components u, holes v): every pair min_count <= v <= u <=
        max_count, the pairs the Shapes generator draws.
        """
        low, high = run.data.min_count, run.data.max_count
        if run.data.convention == "two_counts":
            pairs = [(u, v) for u in range(low, high + 1) for v in range(low, u + 1)]
            return {"counts": torch.tensor(pairs, dtype=torch.float32).repeat_interleave(per_count, dim=0)}
        values = torch.arange(low, high + 1, dtype=torch.float32)
        return {"counts": values.repeat_interleave(per_count)[:, None]}

    def count_dims(self, run: Any) -> tuple[int, ...]:
        """The homology dimension each target count refers to: (0, 1) for two counts (components, holes); for
        one count the Shapes set's ``shapes_dim``, else the topology loss's dim (tdn), else 0 (components)."""
        if run.data.convention == "two_counts":
            return (0, 1)
        if run.data.source == "shapes":
            return (int(run.data.shapes_dim),)
        return (self.parse(run).topo.dims[0],) if self.topology else (0,)

    def preview(self, model: torch.nn.Module, run: Any) -> dict[str, tuple[torch.Tensor, list[str] | None]]:
        """Two samples per target count, captioned with the count they were asked for."""
        from raytopo.families.sampling import SamplerSettings

        cond = self.target_counts(run, per_count=2)
        images = self.sample(model, run, len(cond["counts"]), cond, SamplerSettings(steps=run.train.sample_steps))
        captions = [":".join(str(int(c)) for c in row) for row in cond["counts"].tolist()]
        return {"counts": (images, captions)}

    def sample_targets(self, model: torch.nn.Module, run: Any, sampler: Any, per_count: int, batch_size: int,
                       progress: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``per_count`` samples for each target count of the run's data (`target_counts`), and those targets:
        what `evaluate_model`, the demo and the benches evaluate."""
        from raytopo.families.base import sample_in_batches

        cond = self.target_counts(run, per_count)
        with torch.no_grad():
            images = sample_in_batches(self, model, run, len(cond["counts"]), cond, sampler, batch_size, progress)
        return images, cond

    def evaluate_model(self, model: torch.nn.Module, run: Any, sampler: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """`evaluate` of ``per_count`` samples for each target count of the run's data."""
        images, cond = self.sample_targets(model, run, sampler, per_count, batch_size)
        return self.evaluate(images, cond, self.count_dims(run))

    def metric_names(self, run: Any) -> set[str]:
        cond = self.target_counts(run, per_count=1)
        blank = -torch.ones(len(cond["counts"]), run.data.channels, run.data.image_size, run.data.image_size)
        return set(self.evaluate(blank, cond, self.count_dims(run)))

    def evaluate(self, samples: torch.Tensor, cond: Mapping[str, torch.Tensor],
                 dims: tuple[int, ...] | None = None) -> dict[str, float]:
        """Topology accuracy of generated masks against their target counts (the reference evaluation).

        ``dims`` gives the homology dimension of each count column (`count_dims`; default: components, then
        holes).

        Keys follow `raytopo.commands.evaluate.flat_metrics`: ``dim0_conn4_accuracy``, ``dim0_conn4_f1``,
        ``dim0_conn8_...`` and, for two counts, ``dim1_...``; plus ``<measure>_within1`` (the fraction of samples
        whose count is within 1 of the target) and ``saturated`` (the fraction of pixels with |x| > 0.8: a
        clean mask is almost all +-1, a speckled or blurred one is not).
        """
        from raytopo.eval.topology_metrics import count_metrics, count_samples

        pixels = samples[:, 0].detach().float().cpu().numpy()
        masks = ((pixels + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        counts = cond["counts"].detach().cpu().numpy().reshape(len(masks), -1).round().astype(int)
        dims = dims if dims is not None else (0, 1)[: counts.shape[1]]
        measures = []
        for column, dim in enumerate(dims):
            if dim == 0:
                measures += [("dim0_conn4", 0, 4, column), ("dim0_conn8", 0, 8, column)]
            else:
                measures.append(("dim1", 1, 4, column))
        result: dict[str, float] = {"n": float(len(masks)), "saturated": float((np.abs(pixels) > 0.8).mean())}
        for name, dim, connectivity, column in measures:
            measured = np.asarray(count_samples(masks, dim, connectivity))
            metrics = count_metrics(counts[:, column], measured)
            for key in ("accuracy", "f1", "mae"):
                result[f"{name}_{key}"] = float(getattr(metrics, key))
            result[f"{name}_within1"] = float((np.abs(measured - counts[:, column]) <= 1).mean())
        return result
