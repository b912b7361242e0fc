"""The one exception type for bad user input: the CLI prints its message and exits 2."""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
