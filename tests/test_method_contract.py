"""The method contract (``methods/base.py``) and the training objective's conditioning seam."""

from __future__ import annotations

import ast
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tsuika.methods.base import Method
from tsuika.methods.dreambooth import DreamBoothConfig, DreamBoothMethod
from tsuika.methods.hypernetwork import HypernetworkMethod
from tsuika.methods.lora import LoraMethod
from tsuika.methods.registry import build_method
from tsuika.methods.textual_inversion import TextualInversionMethod
from tsuika.models.base import BaseModel
from tsuika.training.objective import CONDITIONINGS, build_objective

TRAINING = Path(__file__).resolve().parents[1] / "python" / "tsuika" / "training"


@pytest.mark.parametrize(
    "cls", [LoraMethod, TextualInversionMethod, DreamBoothMethod, HypernetworkMethod]
)
def test_every_method_derives_from_the_contract(cls: type) -> None:
    assert issubclass(cls, Method)
    assert cls.name and cls.name != Method.name


def test_the_defaults_mean_the_method_does_not_use_the_hook() -> None:
    class Plain(Method):
        name = "plain"

    m = Plain()
    assert m.transform_caption("a cat", "cat", random.Random(0)) == "a cat"
    assert m.paired_batch({"pixels": torch.zeros(1, 3, 8, 8)}, 0) is None
    assert m.prior_loss_weight == 0.0
    m.after_step()
    m.configure(seed=3, max_norm=0.0)  # max_norm off is fine
    with pytest.raises(ValueError, match="training.max_norm is not supported by method 'plain'"):
        m.configure(seed=3, max_norm=0.5)


def test_configure_hands_max_norm_to_the_methods_that_apply_it() -> None:
    lora = build_method("lora", {})
    lora.configure(seed=0, max_norm=0.3)
    assert lora.max_norm == 0.3
    with pytest.raises(ValueError, match="not supported by method 'hypernetwork'"):
        build_method("hypernetwork", {}).configure(seed=0, max_norm=0.3)


def test_dreambooth_draws_class_pictures_from_the_run_seed_once_configured() -> None:
    method = DreamBoothMethod(
        DreamBoothConfig(instance_prompt="sks dog", prior_loss_weight=0.0, class_generation_seed=3)
    )
    assert method.seed == 3  # on its own: class_generation_seed
    method.configure(seed=11, max_norm=0.0)
    assert method.seed == 11  # in a run: training.seed


def test_the_training_engine_never_probes_the_method() -> None:
    """No ``hasattr`` / ``getattr`` on a method anywhere in ``training/``."""
    probes = []
    for path in sorted(TRAINING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
                and "method" in ast.unparse(node.args[0])
            ):
                probes.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []


class _RecordingUnet(torch.nn.Module):
    """Returns zeros and remembers the keyword arguments it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs):
        self.calls.append({"x": x, "t": t, **kwargs})
        return SimpleNamespace(sample=torch.zeros_like(x))


def test_a_model_family_plugs_in_its_own_conditioning(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDXL's seam: a registered conditioning's arguments (nested ones too) reach the UNet,
    cast to the weight dtype; an unknown family is refused by name."""
    seen: list[list[str]] = []

    def pooled(model, text_encoder, device, cache):
        def condition(captions, sizes=None):
            seen.append(list(captions))
            n = len(captions)
            return {
                "encoder_hidden_states": torch.ones(n, 3, 4),
                "added_cond_kwargs": {
                    "text_embeds": torch.ones(n, 2),
                    "time_ids": torch.ones(n, 6),
                },
            }

        return condition

    monkeypatch.setitem(CONDITIONINGS, "family-x", pooled)
    unet = _RecordingUnet()
    alphas = torch.linspace(0.99, 0.01, 10)
    model = BaseModel(
        unet=unet,
        vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5)),
        text_encoder=None,
        tokenizer=None,
        scheduler=SimpleNamespace(alphas_cumprod=alphas),
        kind="family-x",
    )
    obj = build_objective(
        model, unet=unet, text_encoder=None, device=torch.device("cpu"), weight_dtype=torch.float64
    )
    latents = torch.ones(2, 4, 2, 2)
    steps = torch.tensor([0, 9])
    loss = obj.per_sample_loss(latents, torch.ones_like(latents), steps, obj.condition(["a", "b"]))
    assert seen == [["a", "b"]]
    call = unet.calls[-1]
    assert call["encoder_hidden_states"].dtype == torch.float64
    assert call["added_cond_kwargs"]["time_ids"].dtype == torch.float64
    assert call["x"].dtype == torch.float64 and call["t"].tolist() == [0, 9]
    # prediction 0, epsilon target 1: the per-sample MSE is 1 for each sample
    assert loss.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="model kind 'family-y' has no training conditioning"):
        build_objective(
            BaseModel(unet, model.vae, None, None, model.scheduler, kind="family-y"),
            unet=unet,
            text_encoder=None,
            device=torch.device("cpu"),
        )
