"""Pretrain the tiny world's Stable Diffusion on a CPU, reproducibly.

    python -m tsuika.world.pretrain [--out DIR] [--seed 0] [--threads 2] [--measure 32]

Same classes as SD 1.x, narrower (see DESIGN.md, "The tiny world"):

- AutoencoderKL, factor 8 (64x64 pixels -> 8x8x4 latents), 4 blocks of
  :data:`VAE_LAYERS` layers, widths :data:`VAE_CHANNELS`; its
  ``scaling_factor`` is 1/std of the trained latents;
- UNet2DConditionModel, 4 blocks of 2 layers, cross-attention in the first
  three down and last three up blocks, widths :data:`UNET_CHANNELS`;
- CLIPTextModel, :data:`TEXT_HIDDEN` wide, :data:`TEXT_LAYERS` layers, with
  the real 49408-token CLIP tokenizer (its token table is the biggest tensor).

Shapes in :data:`pretrain_data.HELD_OUT_SHAPES` (the heart) never appear in
pretraining: they are the new concept the demo and the quality bench teach.
Everything is seeded, single-process and uses deterministic algorithms at a
fixed thread count, so the same command gives the same weights on the same
machine. The folder is written in fp16 with :func:`tsuika.models.save_diffusers`
(its text encoder's config says float32: see :func:`save_half`),
plus ``tsuika_world.json`` (how it was trained, wall time, measured scores).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

VAE_CHANNELS = (16, 16, 32, 32)
VAE_LAYERS = 1
UNET_CHANNELS = (32, 64, 64, 64)
TEXT_HIDDEN = 48
TEXT_LAYERS = 2
DEFAULT_OUT = Path(__file__).parent / "assets" / "tiny-sd"
INFO_FILE = "tsuika_world.json"


def _log(message: str) -> None:
    print(f"[pretrain {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _setup(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # tiny values (Adam moments) turn denormal: slow CPU math
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_untrained(seed: int):
    """The untrained SD1-shaped model (fp32)."""
    from tsuika.models import build_tiny_model

    return build_tiny_model(
        seed,
        vae_factor=8,
        unet_channels=UNET_CHANNELS,
        cross_attention_dim=TEXT_HIDDEN,
        text_hidden=TEXT_HIDDEN,
        text_layers=TEXT_LAYERS,
        vae_channels=VAE_CHANNELS,
        vae_layers=VAE_LAYERS,
        image_size=64,
    )


def pretrain(
    out: Path,
    *,
    seed: int = 0,
    threads: int = 2,
    n_scenes: int = 10000,
    vae_steps: int = 5200,
    vae_batch: int = 16,
    vae_lr: float = 3e-3,
    unet_steps: int = 3900,
    unet_batch: int = 64,
    lr: float = 3e-3,
    measure_n: int = 32,
) -> dict[str, Any]:
    """Train both stages, write the fp16 diffusers folder at ``out``, return the info."""
    from .pretrain_data import HELD_OUT_SHAPES, build_world_data
    from .pretrain_stages import encode_latents, latent_scaling_factor, train_denoiser, train_vae

    _setup(seed, threads)
    start = time.time()
    model = build_untrained(seed)
    data = build_world_data(n_scenes, seed, model.tokenizer)
    _log(f"rendered {n_scenes} scenes ({time.time() - start:.0f}s)")
    vae_curve = train_vae(
        model.vae, data, steps=vae_steps, batch=vae_batch, lr=vae_lr, seed=seed + 1, log=_log
    )
    latents = encode_latents(model.vae, data.pixels)
    scaling = latent_scaling_factor(*latents)
    model.vae.register_to_config(scaling_factor=scaling)
    vae_seconds = time.time() - start
    _log(f"latent scaling factor {scaling} (stage 1 done at {vae_seconds:.0f}s)")
    unet_curve = train_denoiser(
        model.unet, model.text_encoder, model.scheduler, data, latents, scaling,
        steps=unet_steps, batch=unet_batch, lr=lr, seed=seed + 2, log=_log,
    )  # fmt: skip
    seconds = time.time() - start
    info: dict[str, Any] = {
        "held_out_shapes": list(HELD_OUT_SHAPES),
        "seed": seed,
        "threads": threads,
        "scenes": n_scenes,
        "vae": {
            "steps": vae_steps,
            "batch": vae_batch,
            "learning_rate": vae_lr,
            "final_rec_loss": vae_curve[-1],
        },
        "denoiser": {"steps": unet_steps, "batch": unet_batch, "final_loss": unet_curve[-1]},
        "learning_rate": lr,  # the denoiser's
        "latent_scaling_factor": scaling,
        "seconds": round(seconds, 1),
        "stage1_seconds": round(vae_seconds, 1),
        "load_average": list(os.getloadavg()),
    }
    save_half(model, out)
    if measure_n:
        info["measured"] = _measure(out, measure_n)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    _log(f"wrote {out} ({folder_bytes(out) / 1e6:.2f} MB) in {seconds:.0f}s of training")
    return info


def save_half(model, out: Path) -> None:
    """Write ``model`` with fp16 weights (half the size) that every loader reads as fp32.

    diffusers loads the UNet and VAE in fp32 by default, but transformers 5 loads
    a text encoder in the dtype its ``config.json`` names (``dtype="auto"``);
    saved from an fp16 module that is fp16, which breaks
    ``StableDiffusionPipeline.from_pretrained`` on the CPU (Half x Float matmul)
    and gives diffusers' example scripts a half-precision text encoder to train
    (``loss=nan``). The config names float32, so the fp16 values load upcast.
    """
    from tsuika.atomic import write_json_atomic
    from tsuika.models import save_diffusers

    for module in (model.unet, model.vae, model.text_encoder):
        module.half()
    save_diffusers(model, out)
    config_path = out / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    write_json_atomic(config_path, config)


def _measure(folder: Path, n: int) -> dict[str, Any]:
    from tsuika.models import load_base_model

    from .pretrain_measure import format_table, measure

    model = load_base_model(folder)
    results = measure(model, n=n)
    _log(f"measured (n={n}, 25 DDIM steps, cfg 6):\n{format_table(results)}")
    return {"n": n, "steps": 25, "cfg": 6.0, "seed": 0, "results": results}


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tsuika.world.pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="diffusers folder to write")
    recipe = {name: p.default for name, p in inspect.signature(pretrain).parameters.items()}
    parser.add_argument("--seed", type=int, default=recipe["seed"])
    parser.add_argument(
        "--threads",
        type=int,
        default=recipe["threads"],
        help="torch threads (fixed for reproducibility)",
    )
    parser.add_argument(
        "--scenes", type=int, default=recipe["n_scenes"], help="rendered training pictures"
    )
    parser.add_argument("--vae-steps", type=int, default=recipe["vae_steps"])
    parser.add_argument("--vae-lr", type=float, default=recipe["vae_lr"])
    parser.add_argument("--unet-steps", type=int, default=recipe["unet_steps"])
    parser.add_argument(
        "--batch", type=int, default=recipe["unet_batch"], help="denoiser batch size"
    )
    parser.add_argument("--lr", type=float, default=recipe["lr"], help="denoiser learning rate")
    parser.add_argument(
        "--measure",
        type=int,
        default=recipe["measure_n"],
        help="pictures per check prompt (0: skip)",
    )
    args = parser.parse_args(argv)
    pretrain(
        args.out, seed=args.seed, threads=args.threads, n_scenes=args.scenes,
        vae_steps=args.vae_steps, vae_lr=args.vae_lr, unet_steps=args.unet_steps,
        unet_batch=args.batch,
        lr=args.lr, measure_n=args.measure,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
