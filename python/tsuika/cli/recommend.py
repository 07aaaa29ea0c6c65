"""`tsuika recommend DATASET --purpose P`: the method, the settings and a config that runs.

Prints what it found and decided (or one JSON document with ``--json``);
``--write CONFIG.toml`` also writes the commented config. A dataset or model
it cannot use is a one-line error naming the path, exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from tsuika.cli.messages import TsuikaCommand
from tsuika.recommend.rules import PURPOSES


@click.command(cls=TsuikaCommand)
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--purpose", required=True, type=click.Choice(PURPOSES), help="What to teach.")
@click.option("--model", type=click.Path(path_type=Path), help="Base model: file or folder.")
@click.option("--vram", type=click.FloatRange(min=0, min_open=True), help="GPU memory in GiB.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the commented config TOML here.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--identifier", help="The word captions use for the subject (default: inferred).")
@click.option("--flip/--no-flip", default=None, help="Override the purpose's flip rule.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="output.dir of the written config (default: out-PURPOSE-METHOD).")  # fmt: skip
def recommend(
    dataset: Path,
    purpose: str,
    model: Path | None,
    vram: float | None,
    write_to: Path | None,
    as_json: bool,
    identifier: str | None,
    flip: bool | None,
    output_dir: Path | None,
) -> None:
    """Inspect DATASET and recommend a method, settings and a config for PURPOSE."""
    from tsuika.recommend import recommend as decide
    from tsuika.recommend import summary_lines, write_config

    decision = decide(
        dataset, purpose, model=model, vram=vram, identifier=identifier, flip=flip,
        out_dir=output_dir,
    )  # fmt: skip
    written = write_config(decision, write_to) if write_to is not None else None
    if as_json:
        doc = decision.to_json()
        doc["written"] = str(written) if written else None
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo("\n".join(summary_lines(decision)))
    click.echo("settings:")
    for s in decision.settings:
        click.echo(f"  {s.key} = {s.value!r}  ({s.reason})")
    if written is not None:
        click.echo(f"wrote {written}; train with: tsuika train {written}")
