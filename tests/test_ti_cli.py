"""`tsuika train` with method.name = "textual_inversion" end to end on a tiny model:
the loop feeds the placeholder through the caption hook, so the new vectors
learn, and each output format loads in diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from tsuika.cli.train import train as train_command
from tsuika.formats.embedding import load_embedding
from tsuika.models import load_base_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "1_shape"
    folder.mkdir()
    for i in range(3):
        image = Image.new("RGB", (64, 64), (250, 250, 250))
        ImageDraw.Draw(image).regular_polygon((32, 32, 20 + i), 5, fill=(200, 30, 160))
        image.save(folder / f"{i}.png")
    return root


def _train(tmp_path: Path, model: Path, data: Path, fmt: str, template: str) -> dict:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f"""
[model]
path = {json.dumps(str(model))}
[data]
path = {json.dumps(str(data))}
resolution = 64
min_bucket = 32
max_bucket = 128
bucket_step = 32
[method]
name = "textual_inversion"
placeholder_token = "<zkz>"
initializer_token = "shape"
num_vectors = 2
template = "{template}"
[training]
steps = 3
batch_size = 2
learning_rate = 0.05
save_every = 0
[output]
dir = {json.dumps(str(tmp_path / "out"))}
name = "zkz"
format = "{fmt}"
"""
    )
    result = CliRunner().invoke(train_command, [str(cfg)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((tmp_path / "out" / "summary.json").read_text())


@pytest.mark.parametrize(
    "fmt, template, suffix",
    [
        ("a1111", "object", ".pt"),
        ("safetensors", "style", ".safetensors"),
        ("diffusers", "captions", ".safetensors"),
    ],
)
def test_textual_inversion_run(tiny_model_dir, dataset, tmp_path, fmt, template, suffix):
    from diffusers import StableDiffusionPipeline

    summary = _train(tmp_path, tiny_model_dir, dataset, fmt, template)
    final = Path(summary["final_file"])
    assert final == tmp_path / "out" / f"zkz{suffix}" and summary["steps_done"] == 3
    vectors, _ = load_embedding(final)
    assert vectors.shape == (2, 32)

    # the vectors learned: they left the initializer's embedding
    base = load_base_model(tiny_model_dir)
    init_id = base.tokenizer.convert_tokens_to_ids("shape</w>")
    init = base.text_encoder.get_input_embeddings().weight[init_id].detach()
    assert (vectors - init).abs().max() > 1e-4

    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_model_dir), local_files_only=True, safety_checker=None, feature_extractor=None
    )
    pipe.load_textual_inversion(str(final), token="<zkz>")
    prompt = pipe.maybe_convert_prompt("<zkz>", pipe.tokenizer)  # "<zkz> <zkz>_1"
    ids = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
    placed = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    torch.testing.assert_close(placed, vectors.to(placed.dtype), atol=1e-6, rtol=0)
