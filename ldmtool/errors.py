"""User-facing errors: the CLI prints these as one red line and exits non-zero."""


class LdmError(Exception):
    """An error caused by the user's input or environment (bad file, wrong shape, ...).

    The message must be one line that says what is wrong and, where possible, what to do.
    """


class Preempted(LdmError):
    """Training stopped on a pre-emption signal after saving its state; rerunning resumes it.

    The CLI exits with `exit_code` (75, EX_TEMPFAIL: "temporary failure, try again") so that a
    batch script can tell "requeue me" from success and from real errors.
    """

    exit_code = 75
