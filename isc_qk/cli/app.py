"""The Typer application object that every command module registers on."""

import typer

app = typer.Typer(
    name="isc-qk",
    help="ISC2021 image copy detection (descriptor track) end to end, with QK Iteration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """ISC2021 image copy detection (descriptor track) end to end, with QK Iteration."""


@app.command()
def version() -> None:
    """Print the isc-qk version."""
    from .. import __version__

    print(__version__)
