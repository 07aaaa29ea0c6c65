"""``tsuika generate --model M [--vae V] [--lora F[:W]]... [--embedding F[:TOKEN]]...
[--hypernetwork F[:S]]... --prompt P [...] --out DIR``."""

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
@click.option("--vae", type=click.Path(exists=True), help="VAE to use instead of the model's.")
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="FILE[:WEIGHT]",
    help="A LoRA (kohya or diffusers file). Repeatable.",
)
@click.option(
    "--embedding",
    "embeddings",
    multiple=True,
    metavar="FILE[:TOKEN]",
    help="A Textual Inversion embedding; its token is the file's stem unless given. Repeatable.",
)
@click.option(
    "--hypernetwork",
    "hypernetworks",
    multiple=True,
    metavar="FILE[:STRENGTH]",
    help="An A1111 hypernetwork. Repeatable.",
)
@click.option("--prompt", required=True)
@click.option("--negative-prompt", default="", show_default=True)
@click.option(
    "--n", "n", default=1, show_default=True, type=click.IntRange(min=1), help="Number of pictures."
)
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--cfg", default=7.0, show_default=True, type=float, help="Classifier-free guidance scale."
)
@click.option(
    "--seed",
    default=-1,
    show_default=True,
    type=int,
    help="Seed of the first picture (picture i: seed + i); -1 = random.",
)
@click.option("--width", type=click.IntRange(min=8), help="Default: the model's native size.")
@click.option("--height", type=click.IntRange(min=8), help="Default: the model's native size.")
@click.option(
    "--sampler",
    default="euler_a",
    show_default=True,
    help="ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras (or A1111's names).",
)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    help="Default: fp16 on a GPU, fp32 on the CPU.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
def generate(out: str, **options) -> None:
    """Generate pictures with any combination of LoRAs, embeddings, hypernetworks and a VAE.

    Each PNG carries its parameters in A1111's `parameters` text chunk.
    """
    from tsuika.generation import generate as run

    model = options.pop("model")
    prompt = options.pop("prompt")
    pictures = run(model, prompt, out=out, **options)
    for picture in pictures:
        click.echo(str(picture.path))
