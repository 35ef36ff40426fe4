"""The one error tree of the pipeline, and the exit code each branch maps to.

    PipelineError
    ├── UsageError            exit 2  bad command line, config or manifest; nothing was sent
    │   ├── ConfigError               names the key and the file
    │   │   └── ConfigErrors          several at once, one line each
    │   ├── ManifestError             names the file and the problem
    │   ├── ResumeMismatchError       the output folder belongs to a run with other parameters
    │   ├── FolderLockedError         another run holds the output folder
    │   └── ExportError               an export cannot be made as asked (a file exists, no such column)
    ├── RunStoppedError       exit 3  the run ended early but can be resumed
    │   ├── AuthError                 401/403: the key was refused
    │   ├── QuotaError                insufficient_quota / no credit left
    │   ├── ModelNotFoundError        the endpoint does not serve the model
    │   ├── RequestRejectedError      the endpoint refuses the request's shape (a parameter) for the model
    │   ├── BudgetExceededError       max_cost_usd reached
    │   ├── WaitTooLongError          the server asked for a wait over limits.max_wait_s
    │   └── CircuitOpenError          most recent requests failed: the endpoint looks down
    ├── InterruptedRunError   exit 130 Ctrl-C / SIGTERM; resumable
    ├── JournalError          exit 2  the output folder cannot be read or written
    │   ├── UnreadableFileError       one named file of the folder is damaged
    │   └── FolderChangedError        a file vanished while being read (a live run merged it)
    └── RowError                        one row's failure; caught at the per-row boundary
        └── ImageUnreadableError      the image is missing, empty, not an image, too big

A failure of one row is never an exception that leaves the runner: it becomes
that row's status / error_type / error_message (see models.py).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""

    exit_code = 1


class UsageError(PipelineError):
    exit_code = 2


class ConfigError(UsageError):
    def __init__(self, message: str, *, key: str | None = None, path: str | None = None):
        where = []
        if path:
            where.append(str(path))
        if key:
            where.append(f"key '{key}'")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")
        self.key = key
        self.path = path


class ConfigErrors(ConfigError):
    """Every problem a config had, so one edit fixes them all: one line each."""

    def __init__(self, errors: list[ConfigError]):
        UsageError.__init__(self, "\n".join(str(e) for e in errors))
        self.errors = errors
        self.key = errors[0].key
        self.path = errors[0].path

    @staticmethod
    def raise_if_any(errors: list[ConfigError]) -> None:
        """The one error as itself, several as ConfigErrors, none: nothing."""
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ConfigErrors(errors)


class ManifestError(UsageError):
    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ResumeMismatchError(UsageError):
    """The folder holds results made with other request parameters."""


class FolderLockedError(UsageError):
    """Another process holds the output folder's lock; nothing was sent."""


class ExportError(UsageError):
    """``caption export`` cannot do what was asked; nothing was written (or, when a write failed,
    the message names the file and says the files before it were kept)."""


class JournalError(PipelineError):
    exit_code = 2


class UnreadableFileError(JournalError):
    """A file of the output folder cannot be read; ``path`` names it."""

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


class FolderChangedError(JournalError):
    """A file listed a moment ago is gone: a running writer merged or folded it. Read again."""


class RunStoppedError(PipelineError):
    """The run stopped before the manifest was done; re-running resumes it."""

    exit_code = 3


class AuthError(RunStoppedError):
    pass


class QuotaError(RunStoppedError):
    pass


class ModelNotFoundError(RunStoppedError):
    pass


class RequestRejectedError(RunStoppedError):
    """Every row would fail the same way: the request's parameters, not the row, are refused."""


class BudgetExceededError(RunStoppedError):
    pass


class CircuitOpenError(RunStoppedError):
    pass


class WaitTooLongError(RunStoppedError):
    """The server asked every request to wait longer than ``limits.max_wait_s``.

    A daily quota used up (Retry-After: 86400, a reset of ``24h`` with nothing
    remaining) or a hostile answer (``inf``): waiting would look like a hang, so the
    run stops, resumable, and says when a re-run can go on.
    """

    def __init__(self, *, wait_s: float, max_wait_s: float, source: str, resume_after: str | None = None) -> None:
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s
        when = f"after {resume_after}" if resume_after else "later"
        super().__init__(
            f"the server asked to wait {describe_wait(wait_s)} ({source}), longer than limits.max_wait_s "
            f"({max_wait_s:g} s); re-run the same command {when} to resume, or raise --max-wait-s"
        )


def describe_wait(wait_s: float) -> str:
    """``86400 s (1 d 0 h)``: the number as the server gave it, and what it means to a person."""
    if wait_s == float("inf"):
        return "forever (inf)"
    if wait_s >= 1e15:
        return f"{wait_s:.3g} s (about {wait_s / (86400 * 365.25):.3g} years)"
    whole = round(wait_s)  # a wait measured a moment later (86399.6 s) still reads as the server's 86400
    if whole >= 86400 * 365:
        return f"{whole} s (about {whole / (86400 * 365.25):.3g} years)"
    if whole >= 3600:
        return f"{whole} s ({whole // 86400} d {whole % 86400 // 3600} h)"
    return f"{wait_s:.3g} s" if wait_s < 1 else f"{whole} s"


class InterruptedRunError(PipelineError):
    exit_code = 130


class RowError(PipelineError):
    """A failure that belongs to one row; the runner records it and goes on."""


class ImageUnreadableError(RowError):
    pass
