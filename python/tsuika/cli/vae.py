"""``tsuika vae compare IMAGES... --vae V [--vae V2]... [--model M] [--json]``."""

from __future__ import annotations

import json

import click

from tsuika.cli.messages import TsuikaGroup


@click.group(cls=TsuikaGroup)
def vae() -> None:
    """VAE tools."""


@vae.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--vae",
    "vaes",
    multiple=True,
    type=click.Path(exists=True),
    help="A VAE (file or folder). Repeatable.",
)
@click.option("--model", type=click.Path(exists=True), help="Also compare this model's own VAE.")
@click.option(
    "--out",
    default="vae-compare.png",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The side-by-side PNG.",
)
@click.option(
    "--tile-above",
    type=click.IntRange(min=8),
    default=None,
    help="Tile pictures with a side above this many pixels (default: twice the VAE's sample size).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def compare(images, vaes, model, out, tile_above, as_json) -> None:
    """Encode and decode your pictures through each VAE; report PSNR and SSIM and name the best."""
    from tsuika.vae_compare import compare as run
    from tsuika.vae_compare import format_table

    if not vaes and not model:
        raise click.UsageError("give at least one --vae (or --model)")
    report = run(images, vaes, model=model, out=out, tile_above=tile_above)
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
