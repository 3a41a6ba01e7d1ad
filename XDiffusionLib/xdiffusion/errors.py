"""Errors a user can act on, kept apart from bugs so the CLI can print one line and exit 2."""


class XDiffusionError(Exception):
    """A problem with the user's input, arguments or files: reported as one `error:` line, exit code 2."""


class InputError(XDiffusionError):
    """An input file or argument that cannot be used as given."""


class ModelError(XDiffusionError):
    """A model folder that is missing, tampered with, or does not match its config."""


class Cancelled(Exception):
    """The user asked to stop (Ctrl-C, SIGTERM, a progress callback returning False): exit code 130."""


_commit = {"started": False}


def begin_commit() -> None:
    """Outputs are being renamed into place: from now on a cancel request must not interrupt this run (see
    `io.write_volumes`); the CLI's signal handler asks `commit_started()`."""
    _commit["started"] = True


def commit_started() -> bool:
    return _commit["started"]


def reset_commit() -> None:
    """A new run in this process (the CLI's `main`) starts with nothing committed."""
    _commit["started"] = False
