"""The `tsuika` command: a click group; each sub-command lives in its own module.

Errors become messages in one place, :mod:`tsuika.cli.messages`: a user error
is one ``Error:`` line (``--debug`` or ``TSUIKA_DEBUG=1``: the traceback).
"""

from __future__ import annotations

import click

from tsuika import __version__
from tsuika.cli.messages import TsuikaGroup


@click.group(cls=TsuikaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsuika")
@click.option(
    "--debug",
    is_flag=True,
    envvar="TSUIKA_DEBUG",
    help="Show the traceback of an error instead of a one-line message (or TSUIKA_DEBUG=1).",
)
def main(debug: bool) -> None:
    """tsuika: additional training for Stable Diffusion."""


def _register() -> None:
    from tsuika.cli import convert, generate, merge, prep, train, vae
    from tsuika.cli import cv as cv_cli
    from tsuika.cli import demo as demo_cli
    from tsuika.cli import lr_find as lr_find_cli
    from tsuika.cli import recommend as recommend_cli

    main.add_command(prep.prep)
    main.add_command(train.train)
    main.add_command(cv_cli.cv)
    main.add_command(lr_find_cli.lr_find)
    main.add_command(generate.generate)
    main.add_command(merge.merge)
    main.add_command(convert.convert)
    main.add_command(vae.vae)
    main.add_command(demo_cli.demo)
    main.add_command(recommend_cli.recommend)


_register()
