"""Commands of the 'gist' area (registered on the shared Typer app)."""

from .app import app  # noqa: F401
