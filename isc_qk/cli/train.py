"""Commands of the 'train' area (registered on the shared Typer app)."""

from .app import app  # noqa: F401
