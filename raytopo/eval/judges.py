"""Judges of generated images that need no downloaded weights: a small classifier and a small segmenter.

A class-conditional latent diffusion model is judged by whether its samples *look like the class they were
generated for*; a mask-following ControlNet by whether its samples *follow the mask they were generated from*,
including the mask's topology (components and holes). Published evaluations answer both with pretrained
networks (an ImageNet classifier, a pretrained segmentation model) whose weights would have to be downloaded;
raytopo never downloads at run time and its datasets are not ImageNet. So raytopo trains the judges itself,
on the real training images, in seconds on one CPU thread:

* `train_classifier` -> `Classifier`: a few 3x3 convs (two stride-2), global average + max pooling and a
  linear head, trained with Adam on cross-entropy. `class_agreement` is the fraction of generated images it
  assigns to the class they were generated for.
* `train_segmenter` -> `Segmenter`: a small fully-convolutional net (two 3x3 convs at full resolution, one
  stride-2 level, nearest upsampling with a skip connection) predicting per-pixel foreground logits, trained
  with Adam on binary cross-entropy. `mask_iou` / `mean_iou` compare its predicted foreground with the
  conditioning mask; `topology_agreement` compares their numbers of components and holes, counted by
  :func:`raytopo.eval.topology_metrics.count_mask` (the project's counting convention).

A judge is only as good as its own accuracy: an agreement of 0.7 measured by a classifier that is itself right
on 75 % of real held-out images says little. Both trainers therefore hold out a seeded random ``held_out``
fraction of the real images and return the judge's score on it (accuracy, or mean per-image IoU); **report
that held-out score beside every agreement the judge measures.**

Inputs: images are float tensors (or arrays) ``[N, C, H, W]`` in ``[-1, 1]`` with ``C`` in ``{1, 3}`` and
``H, W >= 8``; masks are ``[N, 1, H, W]`` in ``{-1, 1}`` (or ``[-1, 1]``; foreground is ``> 0``, see
`binarise`) or already-binarised bool ``[N, H, W]``. Training is deterministic for a given ``seed`` (split,
initialisation, batches and noise), runs on the images' device, uses one torch thread while it trains (the
previous setting is restored) and leaves the global torch RNG untouched. Plain torch/numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError
from raytopo.eval.topology_metrics import count_mask

CHANNELS: tuple[int, ...] = (1, 3)
MIN_SIDE = 8
PREDICT_BATCH = 256


@dataclass(frozen=True)
class JudgeSettings(Checked):
    """How a judge is trained: ``steps`` Adam steps of ``batch_size`` images at learning rate ``lr``.

    ``seed`` fixes the held-out split, the initialisation, the batches and the noise; ``held_out`` is the
    fraction of images kept out of training to score the judge; ``noise`` is the std of Gaussian noise added
    to training batches only (a light augmentation that keeps class and mask semantics, unlike flips or
    rotations, which this project's orientation-dependent classes would not survive).
    """

    steps: int
    lr: float
    batch_size: int
    seed: int = 0
    held_out: float = 0.2
    noise: float = 0.05

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps: expected >= 1, got {self.steps!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {self.batch_size!r}")
        if not 0 < self.held_out < 1:
            raise ConfigError(f"held_out: expected a fraction in (0, 1), got {self.held_out!r}")
        if not self.noise >= 0:
            raise ConfigError(f"noise: expected >= 0, got {self.noise!r}")


CLASSIFIER_DEFAULTS = JudgeSettings(steps=200, lr=3e-3, batch_size=32)
SEGMENTER_DEFAULTS = JudgeSettings(steps=200, lr=5e-3, batch_size=16)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


class Classifier(nn.Module):
    """A small CNN judge of classes: 3x3 convs (two stride-2) -> global avg + max pooling -> linear logits.

    Trained by `train_classifier` on real images; report its held-out accuracy beside `class_agreement`.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.features = nn.Sequential(
            _conv(in_channels, width), _conv(width, width, 2), _conv(width, 2 * width, 2), _conv(2 * width, 2 * width)
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]`` of images ``[N, C, H, W]``."""
        features = self.features(images)
        return self.head(torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1))

    def predict(self, images: Tensor | np.ndarray) -> Tensor:
        """The most likely class of every image, a LongTensor ``[N]`` (on the CPU)."""
        x = _as_images(images, "images", self.in_channels)
        return torch.cat([logits.argmax(1) for logits in _batched_outputs(self, x)])


class Segmenter(nn.Module):
    """A small fully-convolutional judge of foreground: per-pixel logits ``[N, H, W]`` of images ``[N, C, H, W]``.

    Two 3x3 convs at full resolution, one stride-2 level of two 3x3 convs, nearest upsampling back to the input
    size, concatenation with the full-resolution features, a 3x3 conv and a 1x1 conv to one logit per pixel.
    Trained by `train_segmenter` on real (image, mask) pairs; report its held-out IoU beside `mask_iou` and
    `topology_agreement`.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.full = nn.Sequential(_conv(in_channels, width), _conv(width, width))
        self.coarse = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width))
        self.out = nn.Sequential(_conv(3 * width, width), nn.Conv2d(width, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """Foreground logits ``[N, H, W]``."""
        full = self.full(images)
        coarse = F.interpolate(self.coarse(full), size=full.shape[-2:], mode="nearest")
        return self.out(torch.cat([full, coarse], 1))[:, 0]

    def predict(self, images: Tensor | np.ndarray) -> Tensor:
        """The predicted foreground (logit > 0) of every image, a BoolTensor ``[N, H, W]`` (on the CPU)."""
        x = _as_images(images, "images", self.in_channels)
        return torch.cat([logits > 0 for logits in _batched_outputs(self, x)])


def train_classifier(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    num_classes: int,
    *,
    steps: int = CLASSIFIER_DEFAULTS.steps,
    lr: float = CLASSIFIER_DEFAULTS.lr,
    batch_size: int = CLASSIFIER_DEFAULTS.batch_size,
    seed: int = 0,
    held_out: float = 0.2,
    noise: float = CLASSIFIER_DEFAULTS.noise,
) -> tuple[Classifier, float]:
    """Train a `Classifier` on real ``images`` ``[N, C, H, W]`` with ``labels`` ``[N]`` in ``[0, num_classes)``.

    A seeded random ``held_out`` fraction (at least one image) is kept out of training. Returns the model in
    eval mode and its accuracy on the held-out images, which must be reported beside any `class_agreement`
    it measures.

    Raises:
        ConfigError: a training setting or ``num_classes`` out of range.
        InputError: images or labels of the wrong shape or values, or too few images to hold some out.
    """
    settings = JudgeSettings(steps, lr, batch_size, seed, held_out, noise)
    if num_classes < 2:
        raise ConfigError(f"num_classes: expected >= 2, got {num_classes!r}")
    x = _as_images(images, "images")
    y = _as_labels(labels, len(x), num_classes, device=x.device)
    model = _seeded(lambda: Classifier(x.shape[1], num_classes), settings.seed).to(x.device)
    train, test = _split(len(x), settings)
    _fit(model, x[train], y[train], lambda logits, target: F.cross_entropy(logits, target), settings)
    return model, class_agreement(model, x[test], y[test].cpu())


def train_segmenter(
    images: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    *,
    steps: int = SEGMENTER_DEFAULTS.steps,
    lr: float = SEGMENTER_DEFAULTS.lr,
    batch_size: int = SEGMENTER_DEFAULTS.batch_size,
    seed: int = 0,
    held_out: float = 0.2,
    noise: float = SEGMENTER_DEFAULTS.noise,
) -> tuple[Segmenter, float]:
    """Train a `Segmenter` on real ``images`` ``[N, C, H, W]`` and their ``masks`` (foreground: see `binarise`).

    A seeded random ``held_out`` fraction (at least one image) is kept out of training. Returns the model in
    eval mode and its mean per-image IoU (`mean_iou`) on the held-out images, which must be reported beside any
    `mask_iou` or `topology_agreement` it measures.

    Raises:
        ConfigError: a training setting out of range.
        InputError: images or masks of the wrong shape or values, or too few images to hold some out.
    """
    settings = JudgeSettings(steps, lr, batch_size, seed, held_out, noise)
    x = _as_images(images, "images")
    target = binarise(masks)
    if target.shape != (x.shape[0], *x.shape[2:]):
        raise InputError(f"masks: expected {x.shape[0]} masks of {x.shape[2]}x{x.shape[3]} (one per image), "
                         f"got {target.shape[0]} of {target.shape[1]}x{target.shape[2]}")
    model = _seeded(lambda: Segmenter(x.shape[1]), settings.seed).to(x.device)
    train, test = _split(len(x), settings)
    _fit(model, x[train], target[train].to(x.device, torch.float32), F.binary_cross_entropy_with_logits, settings)
    return model, mean_iou(model.predict(x[test]), target[test])


def class_agreement(classifier: Classifier, images: Tensor | np.ndarray,
                    labels: Tensor | np.ndarray | Sequence[int]) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to their ``labels`` (the class each was generated for).

    Only meaningful beside the classifier's held-out accuracy on real images (`train_classifier`).
    """
    x = _as_images(images, "images", classifier.in_channels)
    y = _as_labels(labels, len(x), classifier.num_classes)
    return float((classifier.predict(x) == y).double().mean())


def binarise(masks: Tensor | np.ndarray) -> Tensor:
    """Foreground ``[N, H, W]`` (a BoolTensor on the CPU) of masks ``[N, C, H, W]`` (channel 0) or ``[N, H, W]``.

    Float masks in ``[-1, 1]`` are foreground where ``> 0`` (a value of exactly 0 is background); bool masks are
    used as they are. (Not :func:`raytopo.topology.betti.binarise`, which takes one mask with [0, 1] or uint8
    conventions.)
    """
    m = masks.detach().cpu() if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))
    if m.ndim == 4:
        m = m[:, 0]
    if m.ndim != 3 or min(m.shape, default=0) < 1:
        raise InputError(f"masks: expected shape [N, 1, H, W] or [N, H, W], got {list(m.shape)}")
    if m.dtype == torch.bool:
        return m
    if not (m.is_floating_point() or m.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"masks: expected float values in [-1, 1] or bool, got dtype {m.dtype}")
    if m.is_floating_point() and not torch.isfinite(m).all():
        raise InputError("masks: contains NaN or infinite values")
    return m > 0


def mask_iou(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> np.ndarray:
    """Per-image intersection over union of bool masks ``[N, H, W]``, float64 ``[N]``; two empty masks give 1."""
    p, t = _as_bool_masks(pred, "pred"), _as_bool_masks(target, "target")
    if p.shape != t.shape:
        raise InputError(f"target: expected bool masks of shape {list(p.shape)} (as pred), got {list(t.shape)}")
    intersection = (p & t).sum((1, 2)).double()
    union = (p | t).sum((1, 2)).double()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return iou.numpy()


def mean_iou(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """The mean of `mask_iou` over images."""
    return float(mask_iou(pred, target).mean())


def topology_agreement_by_dim(
    pred_masks: Tensor | np.ndarray,
    target_masks: Tensor | np.ndarray,
    dims: Sequence[int] = (0, 1),
    connectivity: int = 4,
) -> dict[str, float]:
    """Fraction of images whose predicted foreground has the target's number of components / holes.

    Masks are bool ``[N, H, W]`` or ``[-1, 1]`` masks (see `binarise`). Counts come from
    :func:`raytopo.eval.topology_metrics.count_mask` on uint8 0/255 masks (components with ``connectivity``,
    holes 8-connected background regions off the border). Returns ``{"dim0": .., "dim1": .., "all": ..}`` with
    one ``dimK`` key per requested dim, ``"all"`` being the fraction that agrees in every requested dim.

    Raises:
        ConfigError: ``dims`` empty or not within (0, 1), or ``connectivity`` not 4 or 8.
        InputError: masks of different shapes or invalid values.
    """
    dims = tuple(dims)
    if not dims or any(d not in (0, 1) for d in dims) or len(set(dims)) != len(dims):
        raise ConfigError(f"dims: expected distinct values from (0, 1), got {dims!r}")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity: expected 4 or 8, got {connectivity!r}")
    pred, target = binarise(pred_masks), binarise(target_masks)
    if pred.shape != target.shape:
        raise InputError(f"target_masks: expected {pred.shape[0]} masks of {pred.shape[1]}x{pred.shape[2]} "
                         f"(as pred_masks), got {target.shape[0]} of {target.shape[1]}x{target.shape[2]}")
    pred_u8, target_u8 = (pred.numpy().astype(np.uint8) * 255, target.numpy().astype(np.uint8) * 255)
    agree = {
        d: np.array([count_mask(a, d, connectivity) == count_mask(b, d, connectivity)
                     for a, b in zip(pred_u8, target_u8)])
        for d in dims
    }
    result = {f"dim{d}": float(hit.mean()) for d, hit in agree.items()}
    result["all"] = float(np.logical_and.reduce(list(agree.values())).mean())
    return result


def topology_agreement(
    pred_masks: Tensor | np.ndarray,
    target_masks: Tensor | np.ndarray,
    dims: Sequence[int] = (0, 1),
    connectivity: int = 4,
) -> float:
    """Fraction of images whose predicted foreground agrees with the target in every dim of ``dims``
    (``topology_agreement_by_dim(...)["all"]``)."""
    return topology_agreement_by_dim(pred_masks, target_masks, dims, connectivity)["all"]


# --- helpers -------------------------------------------------------------------------------------------------


def _as_images(images: Tensor | np.ndarray, name: str, channels: int | None = None) -> Tensor:
    """Float32 images ``[N, C, H, W]`` (C in {1, 3}, or ``channels``; H, W >= 8; finite)."""
    x = images.detach() if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    allowed = CHANNELS if channels is None else (channels,)
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[1] not in allowed or min(x.shape[2:]) < MIN_SIDE:
        raise InputError(f"{name}: expected shape [N, C, H, W] with N >= 1, C in {allowed}, H, W >= {MIN_SIDE}; "
                         f"got {list(x.shape)}")
    if not (x.is_floating_point() and torch.isfinite(x).all()):
        raise InputError(f"{name}: expected finite float values in [-1, 1], got dtype {x.dtype} or NaN/inf")
    return x.float()


def _as_labels(labels: Tensor | np.ndarray | Sequence[int], n: int, num_classes: int,
               device: torch.device | str = "cpu") -> Tensor:
    """Int64 labels ``[n]`` in ``[0, num_classes)``."""
    y = labels.detach().cpu() if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"labels: expected {n} labels (one per image), got shape {list(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InputError(f"labels: expected integer class indices, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels: expected values in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y.long().to(device)


def _as_bool_masks(masks: Tensor | np.ndarray, name: str) -> Tensor:
    m = masks.detach().cpu() if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))
    if m.ndim != 3 or m.dtype != torch.bool:
        raise InputError(f"{name}: expected bool masks [N, H, W] (see binarise), got {m.dtype} {list(m.shape)}")
    return m


def _split(n: int, settings: JudgeSettings) -> tuple[Tensor, Tensor]:
    """Train and held-out indices: a permutation seeded by ``settings.seed``; the first round(held_out * n)
    (at least 1) are held out, and at least one image must remain for training."""
    held = max(1, round(settings.held_out * n))
    if n - held < 1:
        raise InputError(f"images: expected at least 2 images to hold {settings.held_out:g} of them out, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    return order[held:], order[:held]


def _seeded(build, seed: int):
    """``build()`` with the global torch RNG seeded by ``seed`` and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@contextmanager
def _one_thread() -> Iterator[None]:
    """One torch intra-op thread while training (many small ops on a shared CPU); restores the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _batches(n: int, size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` index batches of ``min(size, n)``, walking through seeded permutations epoch by epoch."""
    size, order, at = min(size, n), torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if at + size > n:
            order, at = torch.randperm(n, generator=generator), 0
        yield order[at:at + size]
        at += size


def _fit(model: nn.Module, x: Tensor, target: Tensor, loss_fn, settings: JudgeSettings) -> None:
    """Adam on ``loss_fn(model(batch), target[batch])``; leaves the model in eval mode. Gradients are enabled
    here, so a judge also trains inside an evaluation that runs under ``torch.no_grad``."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    with _one_thread(), torch.enable_grad():
        for index in _batches(len(x), settings.batch_size, settings.steps, generator):
            batch = x[index.to(x.device)]
            if settings.noise > 0:
                batch = batch + settings.noise * torch.randn(batch.shape, generator=generator).to(x.device)
            loss = loss_fn(model(batch), target[index.to(x.device)])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()


def _batched_outputs(model: nn.Module, x: Tensor) -> Iterator[Tensor]:
    """``model`` outputs on the CPU for ``x`` in chunks, without gradients, on the model's device."""
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(x), PREDICT_BATCH):
            yield model(x[start:start + PREDICT_BATCH].to(device)).cpu()


__all__ = [
    "JudgeSettings",
    "CLASSIFIER_DEFAULTS",
    "SEGMENTER_DEFAULTS",
    "Classifier",
    "Segmenter",
    "train_classifier",
    "train_segmenter",
    "class_agreement",
    "binarise",
    "mask_iou",
    "mean_iou",
    "topology_agreement",
    "topology_agreement_by_dim",
]
