"""The one exception type users see.

Anything a user can cause (a missing file, a wrong shape, NaN in a descriptor) is raised as
`UserError` with a one-line message; the CLI prints it and exits non-zero, without a
traceback. Bugs stay ordinary exceptions so that they do show a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or settings, explained in one line."""
