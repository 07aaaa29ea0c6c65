"""SDXL's consumer-GPU switches and its size conditioning from the latent cache.

* cached latents carry the original size and crop the data engine reported, so
  SDXL's ``add_time_ids`` are the same with and without the cache (a cache from
  before is encoded again, with a message);
* gradient checkpointing (UNet and both text encoders) gives the same gradients;
* mixed precision: bf16 runs under the CPU's autocast, fp16 (CUDA only) falls back
  to float32 on the CPU with a warning, as SD1 always did;
* 8-bit AdamW without ``bitsandbytes`` is refused naming the package;
* ``tsuika train`` with gradient checkpointing + bf16 + both caches trains.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika import _native
from tsuika.config import config_from_dict
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.training.data import TrainData
from tsuika.training.objective import batch_sizes

pytestmark = pytest.mark.usefixtures("one_thread")

# (width, height) of pictures whose bucket crop falls off-centre of the original size
PICTURE_SIZES = [(100, 60), (80, 124), (90, 90), (150, 70)]


def draw_sized_dataset(root: Path) -> Path:
    folder = root / "1_shape"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(PICTURE_SIZES):
        image = Image.new("RGB", (w, h), (240, 240, 240))
        ImageDraw.Draw(image).ellipse((5, 5, w - 5, h - 5), fill=(40 * i, 120, 200))
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a shape number {i}\n")
    return root


def _data_config(data: Path, *, flip: bool) -> dict:
    return {
        "data": {
            "path": str(data),
            "resolution": 64,
            "min_bucket": 32,
            "max_bucket": 128,
            "bucket_step": 32,
            "flip": flip,
        },
        "training": {"batch_size": 2, "seed": 3},
    }


def fake_encode(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8x average pooling of the first channels (the cache stores anything)."""
    return torch.nn.functional.avg_pool2d(pixels, 8)


def _sizes_by_index(batches, count: int) -> dict[int, tuple]:
    found: dict[int, tuple] = {}
    for _ in range(count):
        batch = next(batches)
        for i, size in zip(batch["indices"], batch_sizes(batch), strict=True):
            found[i] = size.time_ids
    return found


def test_cached_latents_carry_the_engines_size_and_crop(tmp_path: Path) -> None:
    """The same pictures give the same SDXL time ids from cached and from loaded batches."""
    data = draw_sized_dataset(tmp_path / "data")
    cfg = config_from_dict(_data_config(data, flip=False))
    plain = TrainData(cfg, use_cache=False)
    cached = TrainData(cfg, use_cache=True)
    try:
        cached.enable_cache(tmp_path / "cache", "vae", fake_encode, 2)
        n = len(plain)
        want = _sizes_by_index(plain.batches(), n)
        got = _sizes_by_index(cached.batches(), n)
    finally:
        plain.close()
        cached.close()
    assert sorted(want) == list(range(len(PICTURE_SIZES)))
    assert got == want
    # the engine's sizes, not the fallback (original = target, no crop)
    assert all(ids[:2] != ids[4:] for ids in want.values() if ids[:2] != (90, 90))
    assert any(ids[2:4] != (0, 0) for ids in want.values())


def test_flipped_cached_latents_carry_the_mirrored_crop(tmp_path: Path) -> None:
    data = draw_sized_dataset(tmp_path / "data")
    cfg = config_from_dict(_data_config(data, flip=True))
    train = TrainData(cfg, use_cache=True)
    try:
        train.enable_cache(tmp_path / "cache", "vae", fake_encode, 2)
        for i, bucket in enumerate(train.groups.buckets):
            path = str(train.index[i].path)
            for flip in (False, True):
                _, (h, w), (top, left) = train.cache.load_entry(train._cache_key(i, bucket, flip))
                _, info = _native.load_batch([path], *bucket, flip=[flip], with_info=True)
                assert [h, w, top, left] == info[0].tolist()
    finally:
        train.close()
    assert train.cache.encoded == 2 * len(PICTURE_SIZES)


def test_a_cache_from_before_size_info_is_encoded_again(tmp_path: Path) -> None:
    data = draw_sized_dataset(tmp_path / "data")
    cfg = config_from_dict(_data_config(data, flip=False))
    first = TrainData(cfg, use_cache=True)
    first.enable_cache(tmp_path / "cache", "vae", fake_encode, 2)
    first.close()
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == len(PICTURE_SIZES)
    for file in files[:2]:  # as the cache wrote them before: latents only
        save_file({"latents": load_file(str(file))["latents"]}, str(file))
    again = TrainData(cfg, use_cache=True)
    try:
        again.enable_cache(tmp_path / "cache", "vae", fake_encode, 2)
        assert (again.cache.rebuilt, again.cache.encoded, again.cache.hits) == (2, 2, 2)
        message = again.cache.rebuilt_message()
        assert message is not None and "2 cached latent(s)" in message
        assert "encoded again" in message and str(tmp_path / "cache") in message
        assert all("size_info" in load_file(str(f)) for f in files)
        next(again.batches())  # loads
    finally:
        again.close()


# --------------------------------------------------------------------------- the switches


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return save_diffusers(build_tiny_sdxl_model(0), tmp_path_factory.mktemp("sdxl") / "tiny_sdxl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return draw_dataset(tmp_path_factory.mktemp("data"), n=4)


LORA_BOTH = {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0, "train_text_encoder": True}


def _one_step_gradients(cfg: dict) -> tuple[list[torch.Tensor], dict[str, int]]:
    """The gradient of every trained parameter over one ``train_step`` (captured as it
    arrives, before clipping) and how often each kind of checkpointed block ran."""
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPMLP
    from tsuika.training.loop import Trainer

    trainer = Trainer(config_from_dict(cfg))
    try:
        grads: list[torch.Tensor | None] = [None] * len(trainer.params)
        for n, p in enumerate(trainer.params):
            p.register_hook(lambda g, n=n: grads.__setitem__(n, g.detach().clone()))
        calls = {"unet": 0, "text": 0}
        for key, root, kind in (
            ("unet", trainer.model.unet, ResnetBlock2D),
            # transformers checkpoints a layer's forward, inside its hooks: count its MLP
            ("text", trainer.model.text_encoder, CLIPMLP),
            ("text", trainer.model.text_encoder_2, CLIPMLP),
        ):
            for module in root.modules():
                if isinstance(module, kind):
                    # a pre-hook: a recomputation may stop early, before a post-hook
                    module.register_forward_pre_hook(
                        lambda *_, key=key: calls.__setitem__(key, calls[key] + 1)
                    )
        trainer.train_step(trainer.data.batches())
    finally:
        trainer.close()
    return grads, calls  # type: ignore[return-value]


def test_gradient_checkpointing_gives_the_same_gradients(
    sdxl_folder: Path, dataset: Path, tmp_path: Path
) -> None:
    """One fp32 step with the UNet and both text encoders checkpointed: the blocks run
    again in the backward pass (so checkpointing is on) and the gradients are the same."""
    cfg = run_config(sdxl_folder, dataset, tmp_path / "out")
    cfg["method"] = LORA_BOTH
    cfg["training"].update(gradient_accumulation=1, save_every=0)
    plain, plain_calls = _one_step_gradients(cfg)
    cfg["training"]["gradient_checkpointing"] = True
    checkpointed, calls = _one_step_gradients(cfg)
    assert plain_calls["unet"] > 0 and plain_calls["text"] > 0
    # blocks after the first trained layer run again in the backward pass
    assert calls["unet"] > plain_calls["unet"] and calls["text"] > plain_calls["text"]
    # (text encoder 1's last layer gets none: SDXL reads its penultimate states)
    assert [g is None for g in checkpointed] == [g is None for g in plain]
    assert sum(g is not None for g in plain) > len(plain) // 2
    tolerance = 1e-6
    assert max(g.abs().max() for g in plain if g is not None) > 100 * tolerance
    for a, b in zip(plain, checkpointed, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, atol=tolerance, rtol=1e-5)


def test_fp16_on_the_cpu_trains_in_float32_with_a_warning(
    sdxl_folder: Path, dataset: Path, tmp_path: Path
) -> None:
    """fp16 autocast needs CUDA: on the CPU the run trains in float32 and says so (as
    SD1 always fell back); bf16 is kept (the CPU's autocast)."""
    from tsuika.training.loop import run_precision

    assert run_precision("bf16", False) == ("bf16", None)
    assert run_precision("fp16", True) == ("fp16", None)
    cfg = run_config(sdxl_folder, dataset, tmp_path / "out")
    cfg["method"] = {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0}
    cfg["training"].update(steps=1, save_every=0, gradient_accumulation=1, mixed_precision="fp16")
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mixed_precision"] == "no"
    (warning,) = [w for w in summary["warnings"] if "mixed_precision" in w]
    assert "'fp16' needs a CUDA GPU" in warning and "float32" in warning
    assert "needs a CUDA GPU" in result.output


def test_adamw8bit_without_bitsandbytes_names_the_package(
    sdxl_folder: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, installed or not
    cfg = run_config(sdxl_folder, dataset, tmp_path / "out")
    cfg["training"]["optimizer"] = "adamw8bit"
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code != 0
    assert "optimizer 'adamw8bit' needs the pip package 'bitsandbytes'" in result.output
    assert "pip install bitsandbytes" in result.output
    assert not (tmp_path / "out" / "summary.json").exists()


def test_sdxl_trains_with_checkpointing_bf16_and_both_caches(
    sdxl_folder: Path, dataset: Path, tmp_path: Path
) -> None:
    """The consumer-GPU set together on the CPU: gradient checkpointing, bf16 autocast,
    cached latents and cached text-encoder outputs (the encoders offloaded)."""
    from diffusers import StableDiffusionXLPipeline

    cfg = run_config(sdxl_folder, dataset, tmp_path / "out")
    cfg["method"] = {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0}
    cfg["data"]["cache_latents"] = True
    cfg["training"].update(
        steps=3,
        save_every=0,
        gradient_accumulation=1,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        learning_rate=3e-2,
    )
    cfg["validation"] = {"split": 0.25, "every": 3}
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"
    assert summary["latent_cache"]["encoded"] > 0
    assert summary["text_encoders"]["offloaded"] is True
    assert summary["text_encoders"]["cached_captions"] == 4
    losses = [v for _, v in summary["train_loss"]] + [v for _, v in summary["val_loss"]]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)

    trained = load_file(summary["final_file"])
    assert max(t.abs().max() for k, t in trained.items() if "lora_up" in k) > 0
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 96, generator=g)
    added = {"text_embeds": torch.randn(1, 48, generator=g), "time_ids": torch.ones(1, 6) * 64}
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    with torch.no_grad():
        before = pipe.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        pipe.load_lora_weights(summary["final_file"])
        after = pipe.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    assert (after - before).abs().max() > 1e-4  # the adapter moves the base UNet


def test_a_run_on_a_cache_from_before_size_info_warns_and_reencodes(
    sdxl_folder: Path, dataset: Path, tmp_path: Path
) -> None:
    cfg = run_config(sdxl_folder, dataset, tmp_path / "out")
    cfg["method"] = {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0}
    cfg["data"]["flip"] = False
    cfg["training"].update(steps=1, save_every=0, gradient_accumulation=1)
    config = write_config(tmp_path / "run.toml", cfg)
    assert invoke(str(config)).exit_code == 0
    files = sorted((tmp_path / "out" / "cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 4
    for file in files:  # as the cache wrote them before: latents only
        save_file({"latents": load_file(str(file))["latents"]}, str(file))
    result = invoke(str(config))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["latent_cache"] == {"hits": 0, "encoded": 4}
    (warning,) = [w for w in summary["warnings"] if "cached latent" in w]
    assert warning.startswith("4 cached latent(s)") and "encoded again" in warning
    assert "encoded again" in result.output
