"""The `tsuika` command: a click group; each sub-command lives in its own module."""

import click

from tsuika import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsuika")
def main() -> None:
    """tsuika: additional training for Stable Diffusion."""


def _register() -> None:
    from tsuika.cli import prep, train

    main.add_command(prep.prep)
    main.add_command(train.train)


_register()
