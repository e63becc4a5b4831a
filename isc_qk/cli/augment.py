"""Commands of the 'augment' area (registered on the shared Typer app)."""

from .app import app  # noqa: F401
