"""``tsuika merge --model M [--lora F[:W]]... [--vae V] --out OUT.safetensors``."""

from __future__ import annotations

import click

from tsuika.cli.messages import TsuikaCommand


@click.command(cls=TsuikaCommand)
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True),
    help="Base model: single file or diffusers folder.",
)
@click.option(
    "--lora", "loras", multiple=True, metavar="FILE[:WEIGHT]", help="A LoRA to bake in. Repeatable."
)
@click.option("--vae", type=click.Path(exists=True), help="VAE to bake in instead of the model's.")
@click.option("--fp16", is_flag=True, help="Write the weights in float16.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write."
)
def merge(model: str, loras: tuple[str, ...], vae: str | None, fp16: bool, out: str) -> None:
    """Bake LoRAs (and a VAE) into one checkpoint in the original Stable Diffusion layout,
    which A1111, ComfyUI and diffusers' from_single_file read."""
    import torch

    from tsuika.merge import merge as run

    path = run(model, out, loras=loras, vae=vae, dtype=torch.float16 if fp16 else None)
    click.echo(str(path))
