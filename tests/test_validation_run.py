"""Validation, early stopping, ``-best``, max_norm and on-the-fly augmentation in real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import draw_dataset, draw_picture, run_config
from tsuika.config import config_from_dict
from tsuika.models import build_tiny_model, save_diffusers
from tsuika.training import loop
from tsuika.training.validation import Validator


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusers(build_tiny_model(seed=0), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("val") / "1_sks shape"
    folder.mkdir()
    for i, colour in enumerate([(200, 100, 40), (60, 60, 200)]):
        draw_picture(folder / f"v{i}.png", colour, 2 * i)
        (folder / f"v{i}.txt").write_text(f"sks shape, held out {i}\n")
    return folder.parent


def config(model: Path, data_path: Path, out: Path, **sections: dict) -> dict:
    """A short, constant-LR run (so a run of N steps is a prefix of a longer one)."""
    base = {
        "data": {"flip": False},
        "method": {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.1, "rank_dropout": 0.1},
        "training": {
            "steps": 4,
            "gradient_accumulation": 1,
            "save_every": 0,
            "lr_scheduler": "constant",
            "lr_warmup_steps": 0,
        },
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return run_config(model, data_path, out, **base)


def tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_validation_loss_is_deterministic_and_leaves_the_rng_and_modes_alone(
    tiny_model: Path, dataset: Path, val_folder: Path, tmp_path: Path
) -> None:
    cfg = config_from_dict(
        config(tiny_model, dataset, tmp_path / "out", validation={"folder": str(val_folder)})
    )
    trainer = loop.Trainer(cfg)
    try:
        v = trainer.validation
        assert v is not None and len(v.validator) == 2
        rng = torch.get_rng_state()
        modes = [m.training for m in trainer.model.unet.modules()]
        first = v.validator.loss()
        assert torch.equal(torch.get_rng_state(), rng)
        assert [m.training for m in trainer.model.unet.modules()] == modes
        assert any(modes)  # the UNet trains (LoRA dropout on), yet validation saw eval mode
        torch.manual_seed(123)  # a different global RNG does not change the loss
        assert v.validator.loss() == first
        # a fresh validator over the same weights agrees, with the VAE latents re-encoded
        assert Validator(trainer, v.index).loss() == first
        for _, layer in trainer.method.named_layers():  # different weights, different loss
            layer.lora_up.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        assert v.validator.loss() != first
    finally:
        trainer.close()


def test_more_noise_draws_average_the_one_draw_loss_with_new_draws(
    tiny_model: Path, dataset: Path, val_folder: Path, tmp_path: Path
) -> None:
    losses = {}
    for draws in (1, 2):
        validation = {"folder": str(val_folder), "draws": draws}
        cfg = config_from_dict(
            config(tiny_model, dataset, tmp_path / f"d{draws}", validation=validation)
        )
        trainer = loop.Trainer(cfg)
        try:
            validator = trainer.validation.validator
            losses[draws] = validator.loss()
            assert validator.loss() == losses[draws]  # deterministic with any number of draws
            if draws == 2:  # draw 0 is the one-draw loss; the second draw is new noise
                validator.draws = 1
                assert validator.loss() == losses[1]
        finally:
            trainer.close()
    assert losses[2] != losses[1]


def test_caption_gain_is_the_loss_with_captions_minus_the_loss_without(
    tiny_model: Path, dataset: Path, val_folder: Path, tmp_path: Path
) -> None:
    validation = {"folder": str(val_folder), "metric": "caption_gain", "timesteps": 2}
    cfg = config_from_dict(config(tiny_model, dataset, tmp_path / "g", validation=validation))
    trainer = loop.Trainer(cfg)
    try:
        validator = trainer.validation.validator
        loss = validator.loss()
        gain = validator.caption_gain()
        blank = Validator(trainer, trainer.validation.index)
        blank.items = [(key, bucket, "") for key, bucket, _ in blank.items]
        assert gain == pytest.approx(loss - blank.loss(), rel=1e-6)
        assert gain != 0.0  # the captions change the prediction
    finally:
        trainer.close()
    summary = loop.train(cfg)  # a run follows the gain and records both curves
    assert summary["val_metric"] == "caption_gain"
    assert [s for s, _ in summary["val_score"]] == [s for s, _ in summary["val_loss"]] == [4]
    assert summary["best_val_loss"] == summary["val_score"][0][1]


def test_validation_does_not_change_the_trained_weights(
    tiny_model: Path, dataset: Path, val_folder: Path, tmp_path: Path
) -> None:
    plain = loop.train(config_from_dict(config(tiny_model, dataset, tmp_path / "plain")))
    checked = loop.train(
        config_from_dict(
            config(
                tiny_model,
                dataset,
                tmp_path / "checked",
                validation={"folder": str(val_folder), "every": 1},
            )
        )
    )
    assert "val_loss" not in plain and plain["warnings"] == []
    assert [s for s, _ in checked["val_loss"]] == [1, 2, 3, 4]
    assert_same(tensors(plain["final_file"]), tensors(checked["final_file"]))
    assert plain["train_loss"] == checked["train_loss"]
    summary = json.loads((tmp_path / "checked" / "summary.json").read_text())
    assert summary["best_step"] in (1, 2, 3, 4) and summary["stopped_early"] is False
    assert Path(summary["best_file"]).name == "tiny_lora-best.safetensors"
    assert Path(summary["loss_plot"]).is_file() and Path(plain["loss_plot"]).is_file()


def test_early_stopping_fires_on_a_rising_curve_and_best_equals_a_run_stopped_there(
    tiny_model: Path,
    dataset: Path,
    val_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    curve = iter([1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4])
    monkeypatch.setattr(Validator, "loss", lambda self: next(curve))
    monkeypatch.setattr(
        loop, "overfit_warning", lambda train, val, k: "overfit!" if len(val) > k else None
    )
    validation = {"folder": str(val_folder), "every": 1, "patience": 3}
    summary = loop.train(
        config_from_dict(
            config(
                tiny_model, dataset, tmp_path / "es", validation=validation, training={"steps": 8}
            )
        )
    )
    assert summary["stopped_early"] is True and summary["best_step"] == 2
    assert summary["steps_done"] == 5 and [s for s, _ in summary["val_loss"]] == [1, 2, 3, 4, 5]
    assert (
        summary["warnings"] == ["overfit!"]
        and "tsuika: warning: overfit!" in capfd.readouterr().err
    )
    best = Path(summary["best_file"])
    assert best == tmp_path / "es" / "tiny_lora-best.safetensors"

    monkeypatch.undo()
    stopped = loop.train(
        config_from_dict(config(tiny_model, dataset, tmp_path / "two", training={"steps": 2}))
    )
    assert_same(tensors(best), tensors(stopped["final_file"]))
    with pytest.raises(AssertionError):  # the last weights (step 5) differ from the best
        assert_same(tensors(summary["final_file"]), tensors(best))


def test_split_holds_images_out_and_max_norm_and_uncached_augmentation_work(
    tiny_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = draw_dataset(tmp_path / "data")
    max_norm = 0.01
    cfg = config(
        tiny_model,
        data,
        tmp_path / "out",
        data={"cache_latents": True, "rotation": 10.0, "color_jitter": 0.2, "flip": True},
        training={"steps": 3, "max_norm": max_norm, "l1": 1e-4},
        validation={"split": 0.25, "every": 2},
    )
    trainer = loop.Trainer(config_from_dict(cfg))
    try:
        train_paths = {item.path for item in trainer.data.index}
        val_paths = set(trainer.validation.validator.paths)
        assert len(val_paths) == 1 and len(train_paths) == 3 and not train_paths & val_paths
        summary = trainer.run()
    finally:
        trainer.close()
    err = capfd.readouterr().err
    assert "encoded on the fly" in err and "data.rotation, data.color_jitter" in err
    assert any("encoded on the fly" in w for w in summary["warnings"])
    assert summary["latent_cache"] is None and not (tmp_path / "out" / "cache").exists()
    assert [s for s, _ in summary["val_loss"]] == [2, 3] and summary["validation_images"] == 1
    norms = []
    weights = tensors(summary["final_file"])
    for key in weights:
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            down, up = weights[key].flatten(1), weights[f"{name}.lora_up.weight"].flatten(1)
            scale = float(weights[f"{name}.alpha"]) / down.shape[0]
            norms.append(float((up @ down).norm()) * scale)
    assert norms and max(norms) <= max_norm * (1 + 1e-4)  # holds for every module
    assert max(norms) >= max_norm * 0.99  # and was active: some module hit the bound


def test_validation_folder_sharing_training_images_is_an_error(
    tiny_model: Path, dataset: Path, tmp_path: Path
) -> None:
    from tsuika.data.scan import DatasetError

    cfg = config(tiny_model, dataset, tmp_path / "out", validation={"folder": str(dataset)})
    with pytest.raises(DatasetError, match="shares 4 image"):
        loop.Trainer(config_from_dict(cfg))
