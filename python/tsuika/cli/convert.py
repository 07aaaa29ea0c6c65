"""``tsuika convert IN OUT --to kohya|diffusers|a1111|safetensors``."""

from __future__ import annotations

import click

from tsuika.cli.messages import TsuikaCommand


@click.command(cls=TsuikaCommand)
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Choice(["kohya", "diffusers", "a1111", "safetensors"]),
    help="LoRA (SD and SDXL): kohya (= a1111) or diffusers; embedding: a1111, safetensors or "
    "diffusers (SDXL clip_l/clip_g: safetensors only); hypernetwork: a1111 or safetensors.",
)
@click.option("--token", default=None, help="Placeholder token of a diffusers embedding.")
def convert(src: str, dst: str, to: str, token: str | None) -> None:
    """Convert a LoRA, embedding or hypernetwork file between tools' layouts.

    The kind of IN is found from its keys; a round trip gives the same effect.
    """
    from tsuika.convert import convert as run

    path = run(src, dst, to, token=token)
    click.echo(str(path))
