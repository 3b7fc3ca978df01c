"""ADM UNet: layer math against hand-written formulas, improved-diffusion/TDN parameter names, conditioning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adm_helpers import randomized
from torch.nn import functional as F

from raytopo.errors import ConfigError, InputError
from raytopo.models.adm import UNetConfig, UNetModel, timestep_embedding
from raytopo.models.adm.layers import AttentionBlock, ResBlock, qkv_attention

TINY = dict(image_size=16, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(8,))


def tiny(**overrides: object) -> UNetConfig:
    return UNetConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


def batch(cfg: UNetConfig, n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    return x, torch.arange(n) * 300 + 7


# --- layer math against independent formulas -------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_matches_formula(dim: int) -> None:
    t = np.array([0.0, 1.0, 12.5, 999.0])
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    expected = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    if dim % 2:
        expected = np.concatenate([expected, np.zeros((len(t), 1))], axis=1)
    got = timestep_embedding(torch.tensor(t, dtype=torch.float32), dim).numpy()
    assert got.shape == (4, dim)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def reference_attention(qkv: np.ndarray, heads: int) -> np.ndarray:
    """improved-diffusion's QKVAttention after ``qkv.reshape(b * heads, -1, T)``, written with numpy."""
    b, width, length = qkv.shape
    per_head = qkv.reshape(b * heads, width // heads, length)
    ch = width // heads // 3
    q, k, v = per_head[:, :ch], per_head[:, ch : 2 * ch], per_head[:, 2 * ch :]
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = np.einsum("bct,bcs->bts", q * scale, k * scale)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w = w / w.sum(axis=-1, keepdims=True)
    return np.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_qkv_attention_matches_improved_diffusion_layout(heads: int) -> None:
    qkv = torch.randn(2, 3 * 16, 10, generator=torch.Generator().manual_seed(heads), dtype=torch.float64)
    np.testing.assert_allclose(qkv_attention(qkv, heads).numpy(), reference_attention(qkv.numpy(), heads), atol=1e-10)


def test_attention_block_is_residual_with_projection() -> None:
    block = randomized(AttentionBlock(32, num_heads=2)).double()
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    flat = x.reshape(2, 32, 16)
    normed = F.group_norm(flat, 32, block.norm.weight, block.norm.bias, eps=1e-5)
    qkv = F.conv1d(normed, block.qkv.weight, block.qkv.bias)
    h = torch.from_numpy(reference_attention(qkv.detach().numpy(), 2))
    expected = flat + F.conv1d(h, block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x), expected.reshape(x.shape))


@pytest.mark.parametrize("scale_shift", [True, False])
def test_resblock_matches_manual_formula(scale_shift: bool) -> None:
    block = randomized(ResBlock(32, 16, 0.0, out_channels=64, use_scale_shift_norm=scale_shift)).double()
    x, emb = torch.randn(2, 32, 4, 4, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    n1, c1 = block.in_layers[0], block.in_layers[2]
    n2, c2 = block.out_layers[0], block.out_layers[3]
    lin = block.emb_layers[1]
    h = F.conv2d(F.silu(F.group_norm(x, 32, n1.weight, n1.bias)), c1.weight, c1.bias, padding=1)
    e = F.linear(F.silu(emb), lin.weight, lin.bias)[:, :, None, None]
    if scale_shift:
        h = F.group_norm(h, 32, n2.weight, n2.bias) * (1 + e[:, :64]) + e[:, 64:]
    else:
        h = F.group_norm(h + e, 32, n2.weight, n2.bias)
    h = F.conv2d(F.silu(h), c2.weight, c2.bias, padding=1)
    skip = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias)
    torch.testing.assert_close(block(x, emb), skip + h)


# --- parameter names: the keys of improved-diffusion / TDN checkpoints ------------------------------------------


def _res(prefix: str, cin: int, cout: int, emb: int = 128, scale_shift: bool = True) -> dict[str, list[int]]:
    """Keys of improved-diffusion's ResBlock (in_layers[0,2], emb_layers[1], out_layers[0,3], skip_connection)."""
    keys = {
        f"{prefix}.in_layers.0.weight": [cin], f"{prefix}.in_layers.0.bias": [cin],
        f"{prefix}.in_layers.2.weight": [cout, cin, 3, 3], f"{prefix}.in_layers.2.bias": [cout],
        f"{prefix}.emb_layers.1.weight": [cout * (2 if scale_shift else 1), emb],
        f"{prefix}.emb_layers.1.bias": [cout * (2 if scale_shift else 1)],
        f"{prefix}.out_layers.0.weight": [cout], f"{prefix}.out_layers.0.bias": [cout],
        f"{prefix}.out_layers.3.weight": [cout, cout, 3, 3], f"{prefix}.out_layers.3.bias": [cout],
    }  # fmt: skip
    if cin != cout:
        keys |= {f"{prefix}.skip_connection.weight": [cout, cin, 1, 1], f"{prefix}.skip_connection.bias": [cout]}
    return keys


def _attn(prefix: str, c: int) -> dict[str, list[int]]:
    return {
        f"{prefix}.norm.weight": [c], f"{prefix}.norm.bias": [c],
        f"{prefix}.qkv.weight": [3 * c, c, 1], f"{prefix}.qkv.bias": [3 * c],
        f"{prefix}.proj_out.weight": [c, c, 1], f"{prefix}.proj_out.bias": [c],
    }  # fmt: skip


def _conv(prefix: str, cout: int, cin: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [cout, cin, 3, 3], f"{prefix}.bias": [cout]}


def expected_tiny_keys() -> dict[str, list[int]]:
    """Worked out by hand from improved_diffusion/unet.py for image 16, channel_mult (1, 2, 2), model_channels 32,
    1 res block, attention at resolution 8 (ds 2), 1 colour, learn_sigma. Skip channels: [32, 32, 32, 64, 64, 64]."""
    keys = {
        "time_embed.0.weight": [128, 32], "time_embed.0.bias": [128],
        "time_embed.2.weight": [128, 128], "time_embed.2.bias": [128],
        "out.0.weight": [32], "out.0.bias": [32], "out.2.weight": [2, 32, 3, 3], "out.2.bias": [2],
    }  # fmt: skip
    keys |= _conv("input_blocks.0.0", 32, 1) | _res("input_blocks.1.0", 32, 32) | _conv("input_blocks.2.0.op", 32, 32)
    keys |= _res("input_blocks.3.0", 32, 64) | _attn("input_blocks.3.1", 64) | _conv("input_blocks.4.0.op", 64, 64)
    keys |= _res("input_blocks.5.0", 64, 64)
    keys |= _res("middle_block.0", 64, 64) | _attn("middle_block.1", 64) | _res("middle_block.2", 64, 64)
    keys |= _res("output_blocks.0.0", 128, 64) | _res("output_blocks.1.0", 128, 64)
    keys |= _conv("output_blocks.1.1.conv", 64, 64)
    keys |= _res("output_blocks.2.0", 128, 64) | _attn("output_blocks.2.1", 64)
    keys |= _res("output_blocks.3.0", 96, 64) | _attn("output_blocks.3.1", 64) | _conv("output_blocks.3.2.conv", 64, 64)
    keys |= _res("output_blocks.4.0", 96, 32) | _res("output_blocks.5.0", 64, 32)
    return keys


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_state_dict_keys_are_improved_diffusion_keys() -> None:
    assert shapes(UNetModel(tiny(learn_sigma=True))) == expected_tiny_keys()


CONDITION_KEYS = {
    "linear": ({"count_cond": "linear"}, {"label_emb.0.weight": [64, 1], "label_emb.0.bias": [64],
                                          "label_emb.2.weight": [128, 64], "label_emb.2.bias": [128]}),
    "sinusoidal": ({"count_cond": "sinusoidal"}, {"label_emb.0.weight": [128, 32], "label_emb.0.bias": [128],
                                                  "label_emb.2.weight": [128, 128], "label_emb.2.bias": [128]}),
    "two_counts": ({"two_counts": True}, {f"{n}.{i}.{p}": ([128, 32] if i == 0 else [128, 128]) if p == "weight"
                                          else [128] for n in ("zeroCC_emb", "oneHoles_emb")
                                          for i in (0, 2) for p in ("weight", "bias")}),
    "objects": ({"count_cond": "linear", "num_objects": 10},
                {"label_emb.0.weight": [64, 1], "label_emb.0.bias": [64], "label_emb.2.weight": [128, 64],
                 "label_emb.2.bias": [128], "obj_emb.weight": [10, 128]}),
    "upstream_classes": ({"num_classes": 1000}, {"label_emb.weight": [1000, 128]}),
}  # fmt: skip


@pytest.mark.parametrize("name", CONDITION_KEYS)
def test_condition_layers_have_tdn_names(name: str) -> None:
    overrides, extra = CONDITION_KEYS[name]
    assert shapes(UNetModel(tiny(learn_sigma=True, **overrides))) == expected_tiny_keys() | extra


# --- shapes and initialisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape(size: int, channels: int, learn_sigma: bool) -> None:
    cfg = tiny(image_size=size, in_channels=channels, learn_sigma=learn_sigma)
    x, t = batch(cfg)
    with torch.no_grad():
        out = UNetModel(cfg)(x, t)
    assert out.shape == (2, channels * (2 if learn_sigma else 1), size, size)


def test_zero_modules_are_zero_at_init_and_output_is_zero() -> None:
    model = UNetModel(tiny(count_cond="linear"))
    zeroed = [k for k in model.state_dict() if k.startswith("out.2") or ".out_layers.3." in k or ".proj_out." in k]
    assert len(zeroed) == 2 + 2 * 11 + 2 * 4  # out conv, 11 res blocks, 4 attention blocks
    assert all(torch.count_nonzero(model.state_dict()[k]) == 0 for k in zeroed)
    x, t = batch(model.config)
    assert torch.count_nonzero(model(x, t, counts=torch.tensor([1.0, 2.0]))) == 0


def test_avgpool_and_no_conv_resample_work() -> None:
    cfg = tiny(conv_resample=False, use_scale_shift_norm=False)
    model = randomized(UNetModel(cfg))
    assert not any(".op." in k or ".conv." in k for k in model.state_dict())
    x, t = batch(cfg)
    assert model(x, t).shape == x.shape


# --- conditioning -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linear", "sinusoidal"])
def test_count_changes_output(mode: str) -> None:
    model = randomized(UNetModel(tiny(count_cond=mode)))
    x, t = batch(model.config)
    with torch.no_grad():
        a = model(x, t, counts=torch.tensor([1.0, 2.0]))
        b = model(x, t, counts=torch.tensor([3.0, 2.0]))
        a_again = model(x, t, counts=torch.tensor([1.0, 2.0]))
    assert torch.equal(a, a_again)
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])  # the sample whose count did not change


def test_count_embedding_is_added_to_time_embedding() -> None:
    """With the count MLP's last layer zeroed (ReLU(0) = 0), the conditioned model equals the unconditional one."""
    base = randomized(UNetModel(tiny()))
    cond = randomized(UNetModel(tiny(count_cond="linear")), seed=5)
    cond.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        cond.label_emb[2].weight.zero_()
        cond.label_emb[2].bias.zero_()
        x, t = batch(base.config)
        torch.testing.assert_close(cond(x, t, counts=torch.tensor([4.0, 9.0])), base(x, t))


def test_two_counts_use_components_and_holes() -> None:
    model = randomized(UNetModel(tiny(two_counts=True)))
    x, t = batch(model.config)
    with torch.no_grad():
        ref = model(x, t, counts=torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        holes = model(x, t, counts=torch.tensor([[1.0, 3.0], [2.0, 1.0]]))
        comps = model(x, t, counts=torch.tensor([[5.0, 0.0], [2.0, 1.0]]))
    assert not torch.allclose(ref[0], holes[0]) and not torch.allclose(ref[0], comps[0])
    assert not torch.allclose(holes[0], comps[0])
    torch.testing.assert_close(ref[1], holes[1])
    with pytest.raises(InputError, match=r"counts: expected shape \[2, 2\] \(components, holes\)"):
        model(x, t, counts=torch.tensor([1.0, 2.0]))


def test_objects_change_output() -> None:
    model = randomized(UNetModel(tiny(count_cond="linear", num_objects=3)))
    x, t = batch(model.config)
    counts = torch.tensor([2.0, 2.0])
    with torch.no_grad():
        a = model(x, t, counts=counts, objects=torch.tensor([0, 1]))
        b = model(x, t, counts=counts, objects=torch.tensor([2, 1]))
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(InputError, match="objects: expected an integer tensor"):
        model(x, t, counts=counts, objects=torch.tensor([0.0, 1.0]))


def test_upstream_class_embedding() -> None:
    model = randomized(UNetModel(tiny(num_classes=5)))
    x, t = batch(model.config)
    with torch.no_grad():
        a, b = model(x, t, classes=torch.tensor([0, 4])), model(x, t, classes=torch.tensor([1, 4]))
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize(
    ("overrides", "kwargs", "match"),
    [
        ({}, {"counts": torch.tensor([1.0, 2.0])}, "counts: this model was built without counts"),
        ({}, {"objects": torch.tensor([0, 1])}, "objects: this model was built without objects"),
        ({"count_cond": "linear"}, {}, r"counts: this model is conditioned .* needs counts="),
        ({"two_counts": True}, {}, r"counts: this model is conditioned .* needs counts="),
        ({"count_cond": "linear", "num_objects": 2}, {"counts": torch.tensor([1.0, 2.0])}, "objects: .* needs"),
        ({"count_cond": "linear"}, {"counts": torch.tensor([[1.0], [2.0]])}, r"counts: expected shape \[2\]"),
        ({"num_classes": 3}, {}, "classes: this model is conditioned"),
    ],
)
def test_condition_mismatch_raises(overrides: dict, kwargs: dict, match: str) -> None:
    model = UNetModel(tiny(**overrides))
    x, t = batch(model.config)
    with pytest.raises(InputError, match=match) as err:
        model(x, t, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "match"),
    [((2, 3, 16, 16), (2,), r"x: expected \[B, 1, H, W\]"), ((2, 1, 18, 16), (2,), "divisible by 4"),
     ((2, 1, 16, 16), (), r"timesteps: expected shape \[2\]")],
)  # fmt: skip
def test_bad_input_shapes_raise(x_shape: tuple, t_shape: tuple, match: str) -> None:
    model = UNetModel(tiny())
    with pytest.raises(InputError, match=match):
        model(torch.zeros(x_shape), torch.zeros(t_shape))


def test_non_square_input_divisible_is_accepted() -> None:
    model = UNetModel(tiny())
    assert model(torch.zeros(1, 1, 8, 24), torch.zeros(1)).shape == (1, 1, 8, 24)


# --- config validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_size": 48}, r"UNetConfig.image_size: 48 has no default channel_mult; allowed: 16, 28, 32, 64, 128"),
        ({"image_size": 20, "channel_mult": (1, 2, 2, 2)}, r"image_size: 20 must be divisible by .* = 8"),
        ({"count_cond": "onehot"}, r"count_cond: must be one of \('none', 'linear', 'sinusoidal'\)"),
        ({"model_channels": 48}, "model_channels: must be a positive multiple of 32"),
        ({"attention_resolutions": (7,)}, r"attention_resolutions: .* subset of \(16, 8, 4\)"),
        ({"two_counts": True, "count_cond": "linear"}, "two_counts: True cannot be combined"),
        ({"num_classes": 3, "count_cond": "linear"}, "num_classes: > 0"),
        ({"num_heads": 3}, "num_heads: 3 does not divide"),
        ({"dropout": 1.0}, r"dropout: must be in \[0, 1\)"),
        ({"num_objects": -1}, "num_objects: must be an integer >= 0"),
        ({"learn_sigma": 1}, "learn_sigma: must be True or False"),
        ({"channel_mult": ()}, "channel_mult: must be a non-empty tuple"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        tiny(**overrides)
    assert "\n" not in str(err.value)


def test_config_defaults_and_round_trip() -> None:
    cfg = tiny(image_size=32, learn_sigma=True, attention_resolutions=[16, 8])
    assert cfg.levels == (1, 2, 2, 2) and cfg.attention_ds == (2, 4) and cfg.out_channels == 2
    assert UNetConfig(image_size=256).levels == (1, 1, 2, 2, 4, 4)
    assert UNetConfig(image_size=64).levels == (1, 2, 3, 4)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="UNetConfig: unknown field 'colors'"):
        UNetConfig.from_dict({"colors": 3})
