"""Loading improved-diffusion / TDN checkpoints by their own flags and parameter names."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from adm_helpers import randomized

from raytopo.errors import ConfigError, InputError
from raytopo.models.adm import (
    UNetConfig,
    UNetModel,
    load_improved_diffusion,
    load_weights,
    read_state_dict,
    unet_config_from_flags,
)

FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8", num_colors=1)
LABEL_KEYS = {"label_emb.0.weight", "label_emb.0.bias", "label_emb.2.weight", "label_emb.2.bias"}


def inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([10, 700])


def save(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


# --- flags -> config ---------------------------------------------------------------------------------------------


def test_flags_map_to_config() -> None:
    cfg = unet_config_from_flags(**FLAGS, learn_sigma=True, class_cond=True, num_heads=1, use_scale_shift_norm=False)
    assert cfg == UNetConfig(
        image_size=16, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
        num_heads=1, use_scale_shift_norm=False, learn_sigma=True, count_cond="linear",
    )  # fmt: skip
    assert cfg.out_channels == 2


def test_flag_defaults_are_tdn_defaults() -> None:
    cfg = unet_config_from_flags()
    assert (cfg.image_size, cfg.model_channels, cfg.num_res_blocks, cfg.num_heads) == (64, 128, 2, 4)
    assert cfg.attention_resolutions == (16, 8) and cfg.attention_ds == (4, 8)
    assert cfg.use_scale_shift_norm and not cfg.learn_sigma and cfg.in_channels == 3 and cfg.count_cond == "none"


def test_tdn_readme_flags() -> None:
    """The TDN README's 256x256 model (string flag values as argparse would give them)."""
    cfg = unet_config_from_flags(
        image_size="256", num_colors=3, num_channels=128, num_res_blocks=2, num_heads=1, attention_resolutions="16",
        use_scale_shift_norm="False", learn_sigma="True", class_cond="True", diffusion_steps=1000,
        noise_schedule="cosine", rescale_learned_sigmas=False, rescale_timesteps=False, use_fp16=False,
    )  # fmt: skip
    assert cfg.levels == (1, 1, 2, 2, 4, 4) and cfg.attention_ds == (16,) and cfg.count_cond == "linear"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"class_cond": True, "as_time_enc": True}, {"count_cond": "sinusoidal"}),
        ({"two_cls_cond": True}, {"two_counts": True, "count_cond": "none"}),
        ({"class_cond": True, "obj_cond": True}, {"count_cond": "linear", "num_objects": 10}),
        ({"class_cond": True, "obj_cond": True, "num_classes": 4}, {"num_objects": 4}),
        ({"class_cond": True, "upstream_class_embedding": True}, {"num_classes": 1000, "count_cond": "none"}),
    ],
)
def test_condition_flags(flags: dict, expected: dict) -> None:
    cfg = unet_config_from_flags(**FLAGS, **flags)
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"num_chanels": 32}, "flag num_chanels: not an improved-diffusion model flag; allowed: "),
        ({"obj_cond": True}, "flag obj_cond: True needs class_cond True"),
        ({"learn_sigma": "maybe"}, "flag learn_sigma: expected True or False"),
        ({"attention_resolutions": "16;8"}, "flag attention_resolutions: expected comma-separated integers"),
        ({"image_size": 48}, "UNetConfig.image_size: 48 has no default channel_mult"),
    ],
)
def test_bad_flags_raise_config_error(flags: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        unet_config_from_flags(**{**FLAGS, **flags})
    assert "\n" not in str(err.value)


# --- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "kwargs"),
    [
        ({"learn_sigma": True}, {}),
        ({"class_cond": True}, {"counts": torch.tensor([2.0, 5.0])}),
        ({"class_cond": True, "as_time_enc": True}, {"counts": torch.tensor([2.0, 5.0])}),
        ({"two_cls_cond": True}, {"counts": torch.tensor([[1.0, 0.0], [3.0, 2.0]])}),
        ({"class_cond": True, "obj_cond": True}, {"counts": torch.tensor([1.0, 1.0]), "objects": torch.tensor([3, 9])}),
    ],
)
def test_saved_state_dict_reloads_identically(tmp_path: Path, flags: dict, kwargs: dict) -> None:
    model = randomized(UNetModel(unet_config_from_flags(**FLAGS, **flags)))
    path = save(model, tmp_path / "model.pt")
    loaded = load_improved_diffusion(path, **FLAGS, **flags).eval()
    x, t = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, **kwargs), model(x, t, **kwargs))


def test_upstream_class_embedding_is_detected_from_state_dict(tmp_path: Path) -> None:
    model = randomized(UNetModel(unet_config_from_flags(**FLAGS, class_cond=True, upstream_class_embedding=True,
                                                        num_classes=7)))  # fmt: skip
    path = save(model, tmp_path / "upstream.pt")
    loaded = load_improved_diffusion(path, **FLAGS, class_cond=True).eval()
    assert loaded.config.num_classes == 7 and loaded.config.count_cond == "none"
    x, t = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, classes=torch.tensor([6, 0])), model(x, t, classes=torch.tensor([6, 0])))


def test_tdn_linear_state_dict_is_not_mistaken_for_upstream(tmp_path: Path) -> None:
    path = save(UNetModel(unet_config_from_flags(**FLAGS, class_cond=True)), tmp_path / "tdn.pt")
    assert load_improved_diffusion(path, **FLAGS, class_cond=True).config.count_cond == "linear"


def test_ddp_module_prefix_is_stripped(tmp_path: Path) -> None:
    model = randomized(UNetModel(unet_config_from_flags(**FLAGS)))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    assert read_state_dict(tmp_path / "ddp.pt").keys() == model.state_dict().keys()


# --- ADM -> ADM-T: non-strict load of an unconditional checkpoint into a count-conditioned model ----------------------


def test_unconditional_into_conditioned_needs_explicit_non_strict(tmp_path: Path) -> None:
    path = save(UNetModel(unet_config_from_flags(**FLAGS)), tmp_path / "adm.pt")
    with pytest.raises(InputError, match=r"4 missing keys \[label_emb.0.weight, .*strict=False") as err:
        load_improved_diffusion(path, **FLAGS, class_cond=True)
    assert "\n" not in str(err.value)


def test_non_strict_load_leaves_exactly_the_label_layers_new(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = randomized(UNetModel(unet_config_from_flags(**FLAGS)))
    path = save(base, tmp_path / "adm.pt")
    fresh = UNetModel(unet_config_from_flags(**FLAGS, class_cond=True))
    report = load_weights(fresh, read_state_dict(path), strict=False)
    assert set(report.missing) == LABEL_KEYS and report.unexpected == ()

    with caplog.at_level(logging.INFO, logger="raytopo.models.adm.checkpoint"):
        model = load_improved_diffusion(path, **FLAGS, class_cond=True, strict=False).eval()
    assert "4 keys are new and stay at init" in caplog.text and "label_emb.2.bias" in caplog.text
    own = model.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(own[key], value), key
    assert torch.count_nonzero(own["label_emb.0.weight"]) > 0  # default init, not zeros

    with torch.no_grad():  # a zero count embedding reproduces the base model exactly
        model.label_emb[2].weight.zero_()
        model.label_emb[2].bias.zero_()
        x, t = inputs()
        torch.testing.assert_close(model(x, t, counts=torch.tensor([3.0, 8.0])), base(x, t))


def test_non_strict_reports_unexpected_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(UNetModel(unet_config_from_flags(**FLAGS, two_cls_cond=True)), tmp_path / "two.pt")
    with caplog.at_level(logging.WARNING, logger="raytopo.models.adm.checkpoint"):
        load_improved_diffusion(path, **FLAGS, strict=False)
    assert "8 checkpoint keys unused" in caplog.text and "zeroCC_emb.0.weight" in caplog.text


# --- errors ------------------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(InputError, match=f"checkpoint {missing}: file not found"):
        load_improved_diffusion(missing, **FLAGS)


def test_shape_mismatch_names_first_key_and_both_shapes(tmp_path: Path) -> None:
    path = save(UNetModel(unet_config_from_flags(**{**FLAGS, "num_colors": 3})), tmp_path / "rgb.pt")
    with pytest.raises(InputError) as err:
        load_improved_diffusion(path, **FLAGS)
    message = str(err.value)
    assert message == (
        f"checkpoint {path}: key 'input_blocks.0.0.weight' has shape [32, 3, 3, 3] in the checkpoint but "
        "[32, 1, 3, 3] in the model"
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"not a torch file", "not a weights-only torch state dict"), ({"step": 3}, "expected a mapping of parameter")],
)
def test_unreadable_or_wrong_content_raises(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=match) as err:
        load_improved_diffusion(path, **FLAGS)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: an arbitrary pickled object is an error, never executed."""
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "obj": Path("/tmp")}, path)
    with pytest.raises(InputError, match="not a weights-only torch state dict"):
        read_state_dict(path)
