"""`raytopo sample` / `pipeline` / `export` on tiny untrained ldm, controlnet and adm_t checkpoints (no Ray):
output layouts, flags, one-line refusals, nothing overwritten, and diffusers loading the export back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raytopo import cli
from raytopo.checkpoint import save_checkpoint
from raytopo.models.ema import make_ema
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBJECTS = {"source": "objects", "channels": 3, "image_size": 16, "num_images": 16, "max_count": 2}
TINY_LDM = {"autoencoder": {"steps": 1, "block_out_channels": [16, 16], "norm_num_groups": 8},
            "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}}
CLASSES = ["red_stripes", "blue_dots", "green_checks", "yellow_plain"]


def write(directory: Path, config: dict) -> Path:
    run = parse_run_config(config)
    family = get_family(run.family)
    torch.manual_seed(0)
    model = family.build(run)
    return save_checkpoint(directory, model, make_ema(model), None, 1, run.to_plain(), 0, family.structure(model))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ldm = write(root / "ldm", {"family": "ldm", "model": TINY_LDM, "data": OBJECTS, "train": {"steps": 2}})
    controlnet = write(root / "controlnet", {"family": "controlnet", "model": {"ldm": str(ldm)}, "data": OBJECTS})
    counts = write(root / "adm_t", {"family": "adm_t", "model": {"unet": {"model_channels": 32, "num_res_blocks": 1,
                                                                         "attention_resolutions": []},
                                                                "diffusion": {"steps": 50}},
                                    "data": {"source": "shapes", "image_size": 16, "max_count": 2}})
    return {"ldm": ldm, "controlnet": controlnet, "adm_t": counts}


@pytest.fixture(autouse=True)
def few_judge_images(monkeypatch):
    import raytopo.families.latent as latent

    monkeypatch.setattr(latent, "JUDGE_IMAGES", 64)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_ldm_samples_go_to_one_folder_per_class(checkpoints, tmp_path):
    out = tmp_path / "all"
    assert cli.main(["sample", str(checkpoints["ldm"]), "--per-count", "2", "--steps", "2", "--out", str(out)]) == 0
    expected = [f"{name}/{name}_{i:04d}.png" for name in CLASSES for i in range(2)] + ["grid/grid.png"]
    assert files(out) == sorted(expected)
    with Image.open(out / "blue_dots" / "blue_dots_0001.png") as image:
        assert image.size == (16, 16) and image.mode == "RGB"

    chosen = tmp_path / "chosen"
    assert cli.main(["sample", str(checkpoints["ldm"]), "--classes", "green_checks,0", "--per-count", "1",
                     "--steps", "2", "--guidance", "1.5", "--out", str(chosen)]) == 0
    assert files(chosen) == ["green_checks/green_checks_0000.png", "grid/grid.png", "red_stripes/red_stripes_0000.png"]


def test_unknown_class_and_wrong_flags_are_one_line_errors(checkpoints, tmp_path, capsys):
    assert cli.main(["sample", str(checkpoints["ldm"]), "--classes", "purple", "--out", str(tmp_path / "a")]) != 0
    error = capsys.readouterr().err.strip()
    assert "unknown class 'purple'; known: red_stripes, blue_dots, green_checks, yellow_plain" in error
    assert len(error.splitlines()) == 1
    assert cli.main(["sample", str(checkpoints["ldm"]), "--counts", "1", "--out", str(tmp_path / "b")]) != 0
    assert "not conditioned on counts (it samples per class); leave --counts out" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_controlnet_samples_follow_held_out_masks_or_a_mask_folder(checkpoints, tmp_path):
    out = tmp_path / "held_out"
    assert cli.main(["sample", str(checkpoints["controlnet"]), "--per-count", "1", "--steps", "2",
                     "--conditioning-scale", "0.5", "--out", str(out)]) == 0
    assert files(out) == sorted([f"images/{i:05d}.png" for i in range(4)] + [f"masks/{i:05d}.png" for i in range(4)]
                                + ["grid/grid.png"])
    with Image.open(out / "grid" / "grid.png") as grid:    # 4 pairs: 2 rows of mask, image, mask, image
        assert grid.size == (4 * 17 + 1, 2 * 17 + 1)

    folder = tmp_path / "my_masks"
    folder.mkdir()
    square = np.zeros((32, 32), dtype=np.uint8)
    square[8:24, 8:24] = 255
    Image.fromarray(square).save(folder / "square.png")
    mine = tmp_path / "mine"
    assert cli.main(["sample", str(checkpoints["controlnet"]), "--masks", str(folder), "--per-count", "2",
                     "--steps", "2", "--out", str(mine)]) == 0
    with Image.open(mine / "masks" / "00001.png") as mask:   # resized nearest-neighbour to 16 px, still binary
        pixels = np.asarray(mask)
    assert pixels.shape == (16, 16) and set(np.unique(pixels)) == {0, 255} and pixels[4:12, 4:12].all()


def test_pipeline_writes_masks_images_grid_and_both_stages_topology(checkpoints, tmp_path, capsys):
    out = tmp_path / "pipeline"
    argv = ["pipeline", "--masks-from", str(checkpoints["adm_t"]), "--controlnet", str(checkpoints["controlnet"]),
            "--counts", "1,2", "--per-count", "2", "--class", "blue_dots", "--steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    names = ["1_00000.png", "1_00001.png", "2_00002.png", "2_00003.png"]
    assert files(out) == sorted([f"images/{n}" for n in names] + [f"masks/{n}" for n in names]
                                + ["grid/grid.png", "report.json"])
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"n", "mask_accuracy", "image_accuracy", "image_to_mask_ratio", "image_mask_agreement",
                           "mask_iou", "segmenter_iou"}
    assert report["n"] == 4 and all(0 <= report[k] <= 1 for k in report if k not in ("n", "image_to_mask_ratio"))
    assert "image_accuracy" in capsys.readouterr().out

    before = files(out)
    assert cli.main(argv) != 0                      # an existing output is never overwritten silently
    assert "not empty" in capsys.readouterr().err and files(out) == before
    swapped = ["pipeline", "--masks-from", str(checkpoints["ldm"]), "--controlnet", str(checkpoints["controlnet"]),
               "--counts", "1", "--out", str(tmp_path / "x")]
    assert cli.main(swapped) != 0
    assert "expected a count model (tdn or adm_t), got a checkpoint of family 'ldm'" in capsys.readouterr().err
    unknown = argv[:-1] + [str(tmp_path / "y")]
    unknown[unknown.index("blue_dots")] = "purple"
    assert cli.main(unknown) != 0
    assert "unknown class 'purple'" in capsys.readouterr().err


def test_export_writes_directories_diffusers_loads_back(checkpoints, tmp_path):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    from raytopo.train.loading import load_model_for_sampling

    out = tmp_path / "exported"
    assert cli.main(["export", str(checkpoints["controlnet"]), "--diffusers", str(out)]) == 0
    _, _, model = load_model_for_sampling(checkpoints["controlnet"])
    vae = AutoencoderKL.from_pretrained(out / "vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(out / "unet", local_files_only=True)
    controlnet = ControlNetModel.from_pretrained(out / "controlnet", local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(out / "scheduler", local_files_only=True)
    info = json.loads((out / "raytopo.json").read_text())
    assert info["class_names"] == CLASSES and info["null_class"] == 4
    assert vae.config.scaling_factor == pytest.approx(float(model.ldm.latent_scale))
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1

    z, t, label = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.tensor([1, 4])
    mask = torch.where(torch.rand(2, 1, 16, 16) > 0.5, 1.0, -1.0)
    with torch.no_grad():
        down, middle = controlnet(z, t, encoder_hidden_states=None, controlnet_cond=mask, class_labels=label,
                                  return_dict=False)
        theirs = unet(z, t, encoder_hidden_states=None, class_labels=label, down_block_additional_residuals=down,
                      mid_block_additional_residual=middle).sample
        torch.testing.assert_close(theirs, model(z, t, label, mask), rtol=0, atol=1e-6)
        images = torch.rand(2, 3, 16, 16) * 2 - 1
        torch.testing.assert_close(vae.decode(vae.encode(images).latent_dist.mode()).sample,
                                   model.ldm.vae.decode(model.ldm.vae.encode(images).latent_dist.mode()).sample)

    assert cli.main(["export", str(checkpoints["ldm"]), "--diffusers", str(out)]) != 0   # not empty: refused
    assert cli.main(["export", str(checkpoints["adm_t"]), "--diffusers", str(tmp_path / "other")]) != 0
