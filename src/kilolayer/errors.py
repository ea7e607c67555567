"""The one error type users see: a one-line message that names the problem and the fix."""


class KiloError(Exception):
    """A problem with the user's input (file, config, flag). The CLI prints it on one line and exits 2."""
