"""``tsuika train CONFIG [--set section.key=value]... [--resume [CHECKPOINT]]``."""

from __future__ import annotations

import click

from tsuika.cli.messages import TsuikaCommand


@click.command(cls=TsuikaCommand)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value (a TOML value; bare words are strings). Repeatable.",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[CHECKPOINT]",
    help="Continue from a checkpoint folder; alone, the newest one in output.dir.",
)
def train(config: str, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train the method of CONFIG (a run configuration TOML) and write its file.

    Several GPUs: ``accelerate launch -m tsuika.cli train CONFIG``.
    """
    from tsuika.config import load_config
    from tsuika.training.interrupt import TrainingInterrupted, resume_command
    from tsuika.training.loop import train as run

    try:
        summary = run(load_config(config, list(overrides)), resume=resume)
    except TrainingInterrupted as exc:
        click.echo(f"{exc}\nresume with: {resume_command(config, overrides)}", err=True)
        raise SystemExit(130) from None
    if summary:
        click.echo(
            f"trained {summary['method']} for {summary['steps_done']} steps: {summary['final_file']}"
        )
        if summary.get("best_step") is not None:
            early = " (stopped early)" if summary.get("stopped_early") else ""
            click.echo(
                f"best validation loss at step {summary['best_step']}{early}: {summary['best_file']}"
            )
        click.echo(f"loss plot: {summary['loss_plot']}")
