"""Errors a user can act on, kept apart from bugs so the CLI can print one line and exit 2."""


class XDiffusionError(Exception):
    """A problem with the user's input, arguments or files: reported as one `error:` line, exit code 2."""


class InputError(XDiffusionError):
    """An input file or argument that cannot be used as given."""


class ModelError(XDiffusionError):
    """A model folder that is missing, tampered with, or does not match its config."""


class Cancelled(Exception):
    """The user asked to stop (Ctrl-C, SIGTERM, a progress callback returning False): exit code 130."""
