"""DreamBooth on a tiny model: what trains, the state, and the files diffusers reads.

``train_steps`` is a tiny loop that calls the method's hooks exactly as the
engine must (caption hook on instance captions only, paired class batch
appended, per-sample min-SNR weights, halves combined by
``prior_preservation_loss``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tsuika.methods.dreambooth import DreamBoothConfig, DreamBoothMethod
from tsuika.models import BaseModel, build_tiny_model, save_diffusers
from tsuika.training.losses import per_sample_mse, prior_preservation_loss
from tsuika.training.noise import add_noise, compute_snr, min_snr_weights

SEED = 5
CLASS_PROMPT = "a photo of a dog"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusers(build_tiny_model(SEED), tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("class") / "dog"  # generated once, kept for every test


def make_method(class_folder: Path, **options) -> DreamBoothMethod:
    table = {
        "instance_prompt": "a photo of sks dog",
        "class_prompt": CLASS_PROMPT,
        "class_data": str(class_folder),
        "num_class_images": 2,
        "class_generation_steps": 2,
        **options,
    }
    return DreamBoothMethod(DreamBoothConfig.from_dict(table))


def train_steps(model: BaseModel, method: DreamBoothMethod, steps: int = 2) -> list[float]:
    """What the engine does per step with a DreamBooth method (min-SNR gamma 5)."""
    groups = method.param_groups(1e-3)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.1)
    model.unet.train()
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixels": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
        "captions": ["sks dog", "sks dog on grass"],
        "epoch": 0,
        "batch": 0,
    }
    alphas = model.scheduler.alphas_cumprod
    losses = []
    for step in range(steps):
        rng = random.Random(step)
        captions = [method.transform_caption(c, "sks dog", rng) for c in batch["captions"]]
        pixels, n_instance = batch["pixels"], len(captions)
        paired = method.paired_batch(batch, step)
        if paired is not None:  # class captions are NOT passed through transform_caption
            pixels = torch.cat([pixels, paired["pixels"]])
            captions = captions + paired["captions"]
        with torch.no_grad():
            latents = model.vae.encode(pixels).latent_dist.mode() * model.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, len(alphas), (latents.shape[0],), generator=g)
        noisy = add_noise(latents, noise, timesteps, alphas)
        ids = model.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        hidden = model.text_encoder(ids)[0]
        pred = model.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        weights = min_snr_weights(compute_snr(timesteps, alphas), 5.0, model.prediction_type)
        loss = prior_preservation_loss(
            per_sample_mse(pred, noise), n_instance, method.prior_loss_weight, weights
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step()
        losses.append(float(loss.detach()))
    model.unet.eval()
    return losses


def states(model: BaseModel) -> dict[str, dict[str, torch.Tensor]]:
    return {
        c: {k: v.clone() for k, v in getattr(model, c).state_dict().items()}
        for c in ("unet", "vae", "text_encoder")
    }


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def probe(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([400]), encoder_hidden_states=ctx).sample


def text_probe(text_encoder) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(torch.tensor([[49406, 320, 1125, 539, 49407]]))[0]


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_what_trains(base_folder, class_folder, train_text_encoder: bool) -> None:
    from tsuika.models import load_base_model

    model = load_base_model(base_folder)
    method = make_method(class_folder, train_text_encoder=train_text_encoder)
    method.prepare(model)
    names = [g["name"] for g in method.param_groups(1e-4)]
    assert names == (["unet", "text_encoder"] if train_text_encoder else ["unet"])
    before = states(model)
    losses = train_steps(model, method)
    after = states(model)
    assert all(loss > 0 for loss in losses) and method.steps == 2
    assert changed(before["vae"], after["vae"]) == set()
    assert len(changed(before["unet"], after["unet"])) > 0.9 * len(before["unet"])
    te_changed = changed(before["text_encoder"], after["text_encoder"])
    if train_text_encoder:
        assert any("layers.0.self_attn" in k for k in te_changed)
    else:
        assert te_changed == set()  # bit-identical, despite AdamW's weight decay


def test_full_model_files_load_in_diffusers(base_folder, class_folder, tmp_path) -> None:
    from diffusers import StableDiffusionPipeline
    from tsuika.models import load_base_model

    model = load_base_model(base_folder)
    method = make_method(class_folder, train_text_encoder=True)
    method.prepare(model)
    train_steps(model, method)
    final = method.save(tmp_path / "out", "sks", "diffusers+single", {"ss_steps": "2"})
    folder, single = tmp_path / "out" / "sks", tmp_path / "out" / "sks.safetensors"
    assert final == single and method.saved == {"folder": folder, "single": single}

    ours = probe(model.unet)
    base = StableDiffusionPipeline.from_pretrained(str(base_folder), local_files_only=True)
    assert (probe(base.unet) - ours).abs().max() > 1e-4  # the files hold the trained model
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    torch.testing.assert_close(probe(pipe.unet), ours, atol=1e-5, rtol=1e-5)

    from_file = StableDiffusionPipeline.from_single_file(
        str(single), config=str(base_folder), local_files_only=True
    )
    torch.testing.assert_close(probe(from_file.unet), probe(pipe.unet), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        text_probe(from_file.text_encoder), text_probe(model.text_encoder), atol=1e-5, rtol=1e-5
    )
    with safe_open(str(single), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
        assert f.get_tensor(keys[0]).dtype == torch.float32
    text_keys = [k for k in keys if k.startswith("cond_stage_model.")]
    assert text_keys and all(
        k.startswith("cond_stage_model.transformer.text_model.") for k in text_keys
    )
    assert any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in keys)
    assert header["tsuika_method"] == "dreambooth" and header["ss_steps"] == "2"
    assert header["dreambooth_class_prompt"] == CLASS_PROMPT


@pytest.mark.parametrize(
    ("fmt", "written"), [("diffusers", ["sks"]), ("single", ["sks.safetensors"])]
)
def test_single_formats_write_one_thing(base_folder, class_folder, tmp_path, fmt, written):
    from tsuika.models import load_base_model

    method = make_method(class_folder, save_precision="fp16")
    method.prepare(load_base_model(base_folder))
    final = method.save(tmp_path, "sks", fmt, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == written and final.name == written[0]
    if fmt == "single":
        with safe_open(str(final), "pt") as f:
            assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    with pytest.raises(ValueError, match="output.format = 'kohya' is not a DreamBooth format"):
        method.save(tmp_path, "x", "kohya", {})


def test_adapter_state_round_trip(base_folder, class_folder) -> None:
    from tsuika.models import load_base_model

    model = load_base_model(base_folder)
    method = make_method(class_folder, train_text_encoder=True)
    method.prepare(model)
    train_steps(model, method, steps=1)
    state = method.adapter_state()
    assert {k.split(".")[0] for k in state} == {"unet", "text_encoder"}
    assert all(v.device.type == "cpu" for v in state.values())

    fresh = load_base_model(base_folder)
    other = make_method(class_folder, train_text_encoder=True)
    other.prepare(fresh)
    other.load_adapter_state(state)
    torch.testing.assert_close(probe(fresh.unet), probe(model.unet), atol=0, rtol=0)
    torch.testing.assert_close(text_probe(fresh.text_encoder), text_probe(model.text_encoder))
    unet_only = make_method(class_folder)
    unet_only.prepare(load_base_model(base_folder))
    with pytest.raises(ValueError, match="unexpected: \\['text_encoder"):
        unet_only.load_adapter_state(state)


def test_dreambooth_lora_writes_a_kohya_file_diffusers_reads(
    base_folder, class_folder, tmp_path
) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from tsuika.models import load_base_model

    model = load_base_model(base_folder)
    method = make_method(class_folder, lora=True, rank=4, alpha=2)  # alpha != rank: scale 0.5
    method.max_norm = 10.0  # as the engine sets training.max_norm before prepare
    method.prepare(model)
    assert method.lora.max_norm == 10.0
    assert [g["name"] for g in method.param_groups(1e-3)] == ["unet"]
    before = states(model)
    train_steps(model, method)
    unet_changed = changed(before["unet"], states(model)["unet"])
    assert unet_changed and all(".lora_" in k for k in unet_changed)  # base weights stay put
    assert changed(before["text_encoder"], states(model)["text_encoder"]) == set()

    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # as after a longer run: two steps move the LoRA too little to see
        for name, tensor in model.unet.named_parameters():
            if name.endswith("lora_up.weight"):
                tensor.add_(torch.randn(tensor.shape, generator=gen))
    final = method.save(tmp_path, "sks", "diffusers+single", {})  # the default means kohya
    assert final == tmp_path / "sks.safetensors" and sorted(tmp_path.iterdir()) == [final]
    tensors = load_file(str(final))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {2.0}
    pipe = StableDiffusionPipeline.from_pretrained(str(base_folder), local_files_only=True)
    plain = probe(pipe.unet)
    pipe.load_lora_weights(str(final))
    theirs, ours = probe(pipe.unet), probe(model.unet)
    tolerance = 1e-5
    assert (ours - plain).abs().max() > 100 * tolerance
    torch.testing.assert_close(theirs, ours, atol=tolerance, rtol=0)


def test_max_norm_is_refused_for_full_fine_tuning(class_folder) -> None:
    method = make_method(class_folder)
    method.max_norm = 0.0  # off is fine
    with pytest.raises(ValueError, match="training.max_norm applies to LoRA modules only"):
        method.max_norm = 1.0


def test_hooks_before_prepare_fail_clearly(class_folder) -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        make_method(class_folder).param_groups(1e-4)
