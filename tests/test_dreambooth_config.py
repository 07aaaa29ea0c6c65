"""DreamBooth config: every bad table fails naming the key; good tables keep their values."""

from __future__ import annotations

import pytest
from tsuika.methods.dreambooth import DreamBoothConfig, build

BASE = {"instance_prompt": "a photo of sks dog", "prior_loss_weight": 0.0}
PRIOR = {
    "instance_prompt": "a photo of sks dog",
    "class_prompt": "a photo of a dog",
    "class_data": "data/dog",
}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"class_prompt": "a dog", "prior_loss_weight": 0.0}, "method.instance_prompt"),
        ({**BASE, "instance_prompt": "  "}, "method.instance_prompt"),
        ({**BASE, "colour": 3}, "unknown dreambooth option(s) colour"),
        ({**PRIOR, "num_class_images": 0}, "method.num_class_images"),
        ({**PRIOR, "prior_loss_weight": -1.0}, "method.prior_loss_weight"),
        ({**PRIOR, "prior_loss_weight": float("nan")}, "method.prior_loss_weight"),
        ({**PRIOR, "train_text_encoder": "yes"}, "method.train_text_encoder"),
        ({**PRIOR, "text_encoder_lr": -1e-5}, "method.text_encoder_lr"),
        ({**PRIOR, "use_captions": 1}, "method.use_captions"),
        ({**PRIOR, "class_generation_steps": 0}, "method.class_generation_steps"),
        ({**PRIOR, "class_generation_batch": 0}, "method.class_generation_batch"),
        ({**PRIOR, "class_resolution": 4}, "method.class_resolution"),
        ({**PRIOR, "save_precision": "fp8"}, "method.save_precision"),
        ({**PRIOR, "rank": 4}, "method.rank: LoRA option(s) rank need lora = true"),
        ({**PRIOR, "lora": True, "rank": 0}, "method.rank"),
        ({**PRIOR, "lora": True, "targets": ["mlp"]}, "method.targets"),
    ],
)
def test_bad_tables_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        DreamBoothConfig.from_dict(table)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("table", "from_dataset", "message"),
    [
        ({"instance_prompt": "sks", "class_prompt": "a dog"}, False, "method.class_data: is req"),
        ({"instance_prompt": "sks", "class_data": "x"}, False, "method.class_prompt: is req"),
        (PRIOR, True, "method.class_data: and the dataset's is_reg subsets both give"),
        (BASE, True, "method.prior_loss_weight: is 0 (prior preservation off), but the dataset"),
    ],
)
def test_class_pictures_need_exactly_one_source(table, from_dataset, message) -> None:
    cfg = DreamBoothConfig.from_dict(table)
    with pytest.raises(ValueError) as info:
        cfg.check_class_source(from_dataset=from_dataset)
    assert message in str(info.value)


def test_one_source_of_class_pictures_passes() -> None:
    DreamBoothConfig.from_dict(PRIOR).check_class_source(from_dataset=False)
    DreamBoothConfig.from_dict(BASE).check_class_source(from_dataset=False)
    only_prompt = {"instance_prompt": "sks", "class_prompt": "a dog"}
    DreamBoothConfig.from_dict(only_prompt).check_class_source(from_dataset=True)
    DreamBoothConfig.from_dict({"instance_prompt": "sks"}).check_class_source(from_dataset=True)


def test_unknown_key_lists_the_allowed_ones_including_lora_keys() -> None:
    with pytest.raises(ValueError, match="allowed: .*instance_prompt.*rank"):
        DreamBoothConfig.from_dict({**PRIOR, "lr": 1})


def test_prior_off_needs_no_class_data_and_defaults_hold() -> None:
    cfg = DreamBoothConfig.from_dict(BASE)
    assert not cfg.prior_preservation
    assert (cfg.train_text_encoder, cfg.lora, cfg.use_captions) == (False, False, False)
    on = DreamBoothConfig.from_dict(PRIOR)
    assert on.prior_preservation and on.prior_loss_weight == 1.0 and on.num_class_images == 100


def test_lora_keys_pass_through_with_shared_text_encoder_keys() -> None:
    cfg = DreamBoothConfig.from_dict(
        {
            **PRIOR,
            "lora": True,
            "rank": 8,
            "alpha": 4,
            "targets": ["attention", "ff"],
            "train_text_encoder": True,
            "text_encoder_lr": 1e-5,
        }
    )
    lora = cfg.lora_config()
    assert (lora.rank, lora.alpha, lora.targets) == (8, 4, ("attention", "ff"))
    assert lora.train_text_encoder and lora.text_encoder_lr == 1e-5
    assert cfg.to_dict()["rank"] == 8 and DreamBoothConfig.from_dict(cfg.to_dict()) == cfg


def test_registry_factory_builds_the_method_without_loading_anything() -> None:
    method = build(dict(PRIOR, prior_loss_weight=0.5))
    assert method.name == "dreambooth" and method.prior_loss_weight == 0.5
    assert method.model is None and method.class_images is None
