"""``tsuika lr-find CONFIG [--start 1e-7] [--end 1] [--steps 200] [--set k=v]... [--json]``."""

from __future__ import annotations

import json

import click

from tsuika.cli.messages import TsuikaCommand


@click.command("lr-find", cls=TsuikaCommand)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--start", type=float, default=1e-7, show_default=True, help="First learning rate.")
@click.option("--end", type=float, default=1.0, show_default=True, help="Last learning rate.")
@click.option("--steps", type=click.IntRange(min=2), default=200, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def lr_find(
    config: str,
    start: float,
    end: float,
    steps: int,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Sweep the learning rate exponentially, plot loss against it, suggest one.

    The plot is OUTPUT_DIR/lr_find.png; the suggestion is the rate where the
    smoothed loss falls fastest (fallback: the rate at the minimum / 10).
    """
    from tsuika.config import load_config
    from tsuika.training.lr_find import lr_range_test, sweep

    try:
        sweep(start, end, steps)
    except ValueError as exc:  # --start / --end / --steps that make no sweep
        raise click.UsageError(str(exc)) from None
    cfg = load_config(config, list(overrides))
    result = lr_range_test(cfg, start=start, end=end, steps=steps)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    stopped = " (stopped early: the loss diverged)" if result["stopped_early"] else ""
    click.echo(f"swept {result['steps_done']} learning rates from {start:g} to {end:g}{stopped}")
    click.echo(f"plot: {result.get('plot')}")
    click.echo(f"suggested learning rate: {result['suggested_lr']:.3g} ({result['rule']})")
