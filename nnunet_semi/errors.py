"""The one exception type for bad user input: the CLI prints its message (no traceback) and exits with 2."""


class UserError(ValueError):
    """Bad input from the command line or from files: the message names the problem and what to do."""
