"""Errors a user can act on: the CLI prints one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a wrong flag, a missing file, a model that is not a model."""

    exit_code = 2


class VerificationError(UserError):
    """An artifact failed a check (sparsity, parity); the stage is not written."""


class OtherRankFailed(UserError):
    """Several processes: another rank failed; it printed the cause, this one stops too."""

    exit_code = 1


class OutOfStep(UserError):
    """Several processes met at different points of the run (a bug, not bad input): one line,
    exit 1, instead of collectives paired across stages."""

    exit_code = 1
