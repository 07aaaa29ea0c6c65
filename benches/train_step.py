"""Seconds per training step and peak memory of `tsuika.train` on a tiny model,
against the floor: a bare loop doing only the UNet forward + backward and an
AdamW step on the same LoRA parameters, with the same batch, in the same run.

    .venv/bin/python benches/train_step.py [--steps 30] [--batch 4] [--threads 2] [--model sdxl]

``--model sdxl`` runs the SDXL-shaped tiny model (two text encoders, pooled
embeds and size ids, three levels with 1/2/2 transformer blocks) instead of
the SD 1.x-shaped one.

The ratio engine / floor is the cost of everything the engine adds (data
feeding, text encoding, noise, bookkeeping, checkpoint-free logging).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table  # noqa: E402


def _tiny(kind: str):
    def build():
        from tsuika import models

        builder = models.build_tiny_sdxl_model if kind == "sdxl" else models.build_tiny_model
        return builder(seed=0)

    return build


MODELS = {"sd1": _tiny("sd1"), "sdxl": _tiny("sdxl")}


def draw_dataset(folder: Path, n: int) -> Path:
    sub = folder / "1_shape"
    sub.mkdir(parents=True)
    for i in range(n):
        img = Image.new("RGB", (64, 64), (250, 250, 250))
        ImageDraw.Draw(img).ellipse((8 + i % 8, 10, 50, 54), fill=(200, 40 + 20 * (i % 8), 40))
        img.save(sub / f"{i:03d}.png")
        (sub / f"{i:03d}.txt").write_text("a red circle on a white background")
    return folder


def engine(model_dir: Path, data: Path, out: Path, steps: int, batch: int) -> dict:
    import tsuika

    cfg = {
        "model": {"path": str(model_dir)},
        "data": {
            "path": str(data),
            "resolution": 64,
            "min_bucket": 32,
            "max_bucket": 128,
            "bucket_step": 32,
            "cache_latents": True,
        },
        "method": {"name": "lora", "rank": 4, "alpha": 4},
        "training": {"steps": steps, "batch_size": batch, "learning_rate": 1e-4, "save_every": 0},
        "output": {"dir": str(out), "name": "bench"},
    }
    return tsuika.train(cfg)


def floor(model_dir: Path, steps: int, batch: int) -> float:
    """Seconds per step of UNet forward + backward + AdamW on LoRA parameters only."""
    from tsuika.methods.lora import LoraConfig, LoraMethod
    from tsuika.models import FAMILIES, load_base_model

    model = load_base_model(model_dir, families=FAMILIES)
    method = LoraMethod(LoraConfig(rank=4, alpha=4))
    method.prepare(model)
    opt = torch.optim.AdamW([p for g in method.param_groups(1e-4) for p in g["params"]], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    cells = 64 // model.vae_scale_factor
    latents = torch.randn(batch, 4, cells, cells, generator=g)
    context = torch.randn(batch, 77, model.unet.config.cross_attention_dim, generator=g)
    extra = {}
    if model.kind == "sdxl":  # pooled text embeds and the six size/crop ids
        pooled = model.text_encoder_2.config.projection_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.full((batch, 6), 64.0),
        }
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        t = torch.randint(0, 1000, (batch,), generator=g)
        pred = model.unet(latents, t, encoder_hidden_states=context, **extra).sample
        loss = (pred - latents).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]  # median after warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="sd1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tsuika.models import save_diffusers

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = save_diffusers(MODELS[args.model](), root / "tiny")
        data = draw_dataset(root / "data", 16)
        summary = engine(model_dir, data, root / "out", args.steps, args.batch)
        bare = floor(model_dir, args.steps, args.batch)
    per_step = summary["seconds_per_step"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {
        "engine_seconds_per_step": per_step,
        "floor_seconds_per_step": bare,
        "ratio_engine_over_floor": per_step / bare,
        "engine_peak_rss_gib": summary["peak_memory"]["rss_bytes"] / 1024**3,
        "process_peak_rss_gib": rss,
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
        "model": args.model,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = [
        [
            f"tsuika.train (tiny {args.model} model, LoRA r4, 64x64)",
            f"{per_step:.3f}",
            f"{per_step / bare:.2f}",
        ],
        ["floor: UNet fwd+bwd+AdamW only", f"{bare:.3f}", "1.00"],
    ]
    print(format_table(["path", "s/step", "x floor"], rows))
    print(f"peak RSS of the training run: {result['engine_peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
