"""``tsuika convert IN OUT --to kohya|diffusers|a1111|safetensors``."""

from __future__ import annotations

import click


@click.command()
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Choice(["kohya", "diffusers", "a1111", "safetensors"]),
    help="LoRA: kohya (= a1111) or diffusers; embedding: a1111, safetensors or diffusers; "
    "hypernetwork: a1111 or safetensors.",
)
@click.option("--token", default=None, help="Placeholder token of a diffusers embedding.")
def convert(src: str, dst: str, to: str, token: str | None) -> None:
    """Convert a LoRA, embedding or hypernetwork file between tools' layouts.

    The kind of IN is found from its keys; a round trip gives the same effect.
    """
    from tsuika.convert import ConvertError
    from tsuika.convert import convert as run
    from tsuika.formats.a1111_hypernetwork import HypernetworkFileError
    from tsuika.formats.embedding import EmbeddingFileError

    try:
        path = run(src, dst, to, token=token)
    except (ConvertError, EmbeddingFileError, HypernetworkFileError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
