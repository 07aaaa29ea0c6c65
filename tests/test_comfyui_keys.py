"""Every LoRA and embedding file tsuika writes for ComfyUI / AUTOMATIC1111, checked key by
key against those tools' loading rules, written here as an independent table.

ComfyUI (``comfy/lora.py``: ``model_lora_keys_unet`` / ``model_lora_keys_clip``) places a
kohya-style key when it is

* ``lora_unet_`` + a UNet module path with ``_`` for ``.`` (diffusers' path; ComfyUI also
  takes the original LDM path, which tsuika does not write);
* ``lora_te_text_model_encoder_layers_{i}_{mlp_fc1|mlp_fc2|self_attn_{q,k,v,out}_proj}``
  for SD1 and SD2 (``lora_te1_`` / ``lora_te2_`` for SDXL's two encoders);

followed by ``.lora_up.weight``, ``.lora_down.weight``, ``.alpha`` or ``.dora_scale``.
Anything else is logged as "lora key not loaded". Embeddings: A1111 ``.pt``
(``string_to_param["*"]``) or safetensors ``emb_params`` (``clip_l`` / ``clip_g`` for SDXL).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_models_transformers5_folders import save_with_diffusers
from test_train_cli import draw_dataset
from torch import nn
from tsuika.api import train
from tsuika.convert import lora_to_diffusers, lora_to_kohya
from tsuika.formats.embedding import EmbeddingInfo, embedding_format

pytestmark = pytest.mark.usefixtures("one_thread")

SUFFIXES = ("lora_up.weight", "lora_down.weight", "alpha", "dora_scale")
TE_PARTS = ("mlp_fc1", "mlp_fc2", *(f"self_attn_{p}_proj" for p in ("q", "k", "v", "out")))
TE_PREFIXES = {"sd1": ("lora_te_",), "sd2": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}


def comfyui_module_names(unet: nn.Module, family: str, text_layers: int) -> set[str]:
    """The LoRA module names ComfyUI places on this model (see the module docstring)."""
    names = {
        "lora_unet_" + path.replace(".", "_")
        for path, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    for prefix in TE_PREFIXES[family]:
        names |= {
            f"{prefix}text_model_encoder_layers_{i}_{part}"
            for i in range(text_layers)
            for part in TE_PARTS
        }
    return names


def check_lora_keys(path: Path, allowed: set[str], *, dora: bool) -> dict[str, set[str]]:
    """Fail naming the first key ComfyUI would not load; the suffixes of each module."""
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    modules: dict[str, set[str]] = {}
    for key in keys:
        module, _, suffix = key.partition(".")
        assert suffix in SUFFIXES, f"{path.name}: {key}: suffix .{suffix} is not a ComfyUI one"
        assert module in allowed, f"{path.name}: {key}: ComfyUI has no module {module}"
        modules.setdefault(module, set()).add(suffix)
    expected = set(SUFFIXES) if dora else set(SUFFIXES[:3])
    for module, suffixes in modules.items():
        assert suffixes == expected, f"{path.name}: {module} has {sorted(suffixes)}"
    return modules


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def family(request, tmp_path_factory) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    root = tmp_path_factory.mktemp(request.param)
    model = save_with_diffusers(request.param, root / "model")
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    layers = CLIPTextConfig.from_pretrained(str(model / "text_encoder")).num_hidden_layers
    return {
        "name": request.param,
        "model": model,
        "data": draw_dataset(root / "data", n=2),
        "allowed": comfyui_module_names(unet, request.param, layers),
        "convs": {
            "lora_unet_" + p.replace(".", "_")
            for p, m in unet.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
        },
    }


def train_file(family: dict, out: Path, method: dict, fmt: str = "kohya") -> Path:
    summary = train(
        {
            "model": {"path": str(family["model"])},
            "data": {"path": str(family["data"]), "resolution": 64, "min_bucket": 32,
                     "max_bucket": 64, "bucket_step": 32},
            "method": method,
            "training": {"steps": 2, "batch_size": 1, "learning_rate": 1e-3, "save_every": 0},
            "output": {"dir": str(out), "name": "file", "format": fmt},
        }
    )  # fmt: skip
    return Path(summary["final_file"])


LORA_ALL = {"name": "lora", "rank": 2, "alpha": 1, "targets": ["attention", "proj", "ff"]}
CASES = {
    "unet attention, proj, ff + LoCon convs + text encoder": {
        **LORA_ALL, "conv_rank": 2, "conv_alpha": 1, "train_text_encoder": True,
    },
    "DoRA (unet + text encoder)": {**LORA_ALL, "dora": True, "train_text_encoder": True},
    "DreamBooth-LoRA": {
        "name": "dreambooth", "instance_prompt": "sks shape", "prior_loss_weight": 0.0,
        "lora": True, "rank": 2, "train_text_encoder": True,
    },
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_lora_files_hold_only_keys_comfyui_loads(family: dict, case: str, tmp_path) -> None:
    method = CASES[case]
    path = train_file(family, tmp_path / "out", method)
    modules = check_lora_keys(path, family["allowed"], dora=method.get("dora", False))
    unet = {m for m in modules if m.startswith("lora_unet_")}
    te = {m for m in modules if m.startswith("lora_te_")}
    assert te and unet, sorted(modules)  # both parts written: the check above was not vacuous
    if method.get("conv_rank"):
        assert unet & family["convs"], "no LoCon conv module written"
    if method.get("targets"):
        for part in ("_attn1_to_q", "_proj_in", "_ff_net_2"):
            assert any(m.endswith(part) for m in unet), part


def test_converted_lora_holds_only_keys_comfyui_loads(family: dict, tmp_path) -> None:
    """``tsuika convert --to kohya`` of a diffusers/peft file: the same rules."""
    trained = train_file(
        family, tmp_path / "out", {**LORA_ALL, "train_text_encoder": True}, "diffusers"
    )
    back = lora_to_kohya(trained, tmp_path / "back.safetensors")
    modules = check_lora_keys(back, family["allowed"], dora=False)
    assert any(m.startswith("lora_te_") for m in modules)
    again = lora_to_diffusers(back, tmp_path / "again.safetensors")
    assert again.is_file()


def test_a_key_outside_the_rules_fails_naming_it(family: dict, tmp_path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    key = "lora_te_text_model_encoder_layers_0_self_attn_qkv.lora_up.weight"
    save_file({key: torch.zeros(2, 2)}, str(bad))
    with pytest.raises(AssertionError, match=re.escape(key)):
        check_lora_keys(bad, family["allowed"], dora=False)


# --------------------------------------------------------------------------- embeddings


def check_embedding(path: Path, dims: dict[str, int], n: int) -> None:
    """A1111 / ComfyUI embedding layouts: .pt ``string_to_param['*']``, or safetensors
    ``emb_params`` (SD1/SD2) / ``clip_l`` + ``clip_g`` (SDXL), each ``[n, dim]``."""
    if path.suffix == ".pt":
        data = torch.load(path, weights_only=True)
        assert set(data["string_to_param"]) == {"*"}, path
        assert data["string_to_token"] == {"*": 265}, path
        tensors = {"emb_params": data["string_to_param"]["*"]}
    else:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert set(tensors) == set(dims), (
        f"{path.name}: keys {sorted(tensors)}, expected {sorted(dims)}"
    )
    for key, dim in dims.items():
        assert tuple(tensors[key].shape) == (n, dim), (path.name, key, tensors[key].shape)
        assert torch.isfinite(tensors[key]).all()


@pytest.mark.parametrize("fmt", ["a1111", "safetensors"])
def test_textual_inversion_files_have_the_a1111_layout(family: dict, fmt: str, tmp_path) -> None:
    from transformers import CLIPTextConfig

    method = {"name": "textual_inversion", "placeholder_token": "<zkz>",
              "initializer_token": "shape", "num_vectors": 2}  # fmt: skip
    path = train_file(family, tmp_path / "out", method, fmt)
    hidden = CLIPTextConfig.from_pretrained(str(family["model"] / "text_encoder")).hidden_size
    check_embedding(path, {"emb_params": hidden}, 2)


def test_sdxl_embedding_writes_clip_l_and_clip_g(tmp_path) -> None:
    vectors = {"clip_l": torch.randn(3, 768), "clip_g": torch.randn(3, 1280)}
    path = tmp_path / "x.safetensors"
    embedding_format("safetensors").write(path, vectors, EmbeddingInfo(name="x", token="x"))
    check_embedding(path, {"clip_l": 768, "clip_g": 1280}, 3)
