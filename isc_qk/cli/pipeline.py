"""Commands of the 'pipeline' area (registered on the shared Typer app)."""

from .app import app  # noqa: F401
