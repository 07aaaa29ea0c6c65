"""``tsuika demo [--out DIR] [--steps N]``: teach the tiny world's model a new shape."""

from __future__ import annotations

from pathlib import Path

import click

from tsuika.cli.messages import TsuikaCommand


@click.command(cls=TsuikaCommand)
@click.option(
    "--out", type=click.Path(file_okay=False), default="tsuika-demo", show_default=True,
    help="Folder for the dataset, the LoRA, grid.png and report.md.",
)  # fmt: skip
@click.option("--steps", type=click.IntRange(min=1), default=400, show_default=True,
              help="LoRA training steps.")  # fmt: skip
@click.option("--pictures", type=click.IntRange(min=1), default=30, show_default=True,
              help="Pictures of the new concept to train on.")  # fmt: skip
@click.option("--eval", "n_eval", type=click.IntRange(min=1), default=16, show_default=True,
              help="Pictures generated per prompt, before and after.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str, steps: int, pictures: int, n_eval: int, seed: int) -> None:
    """Train a LoRA for a shape the embedded tiny model never saw; show before/after.

    Runs on the CPU in a few minutes: draws the concept, checks the dataset as
    `tsuika prep` does, trains, generates, and writes grid.png and report.md.
    """
    from tsuika.demo import run_demo

    report = run_demo(
        Path(out), steps=steps, n_images=pictures, n_eval=n_eval, seed=seed, log=click.echo
    )
    folder = Path(out)
    click.echo(
        f"fidelity {report['before']['fidelity']:.2f} -> {report['after']['fidelity']:.2f}, "
        f"composition {report['before']['composition']:.2f} -> "
        f"{report['after']['composition']:.2f}"
    )
    click.echo(f"wrote {folder / 'grid.png'}, {folder / 'report.md'} and {report['lora']}")
