"""``tsuika cv CONFIG --folds K [--steps N] [--set section.key=value]... [--json]``."""

from __future__ import annotations

import json

import click

from tsuika.cli.messages import TsuikaCommand


@click.command(cls=TsuikaCommand)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per fold (default: training.steps).",
)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def cv(
    config: str, folds: int, steps: int | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Cross-validate CONFIG on K disjoint folds and recommend a step count.

    Each fold trains a short run in OUTPUT_DIR/cv/fold-K with that fold as
    validation. The recommendation is the smallest evaluated step whose mean
    validation loss is within one standard error of the lowest mean.
    """
    from tsuika.config import load_config
    from tsuika.training.cv import cross_validate

    result = cross_validate(load_config(config, list(overrides)), folds, steps)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo("step  mean val loss  std")
    for row in result["mean_val_loss"]:
        click.echo(f"{row['step']:>4}  {row['mean']:.5f}  ± {row['std']:.5f}")
    click.echo(result["message"])
