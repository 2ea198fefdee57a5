"""One exception tree for the whole engine, split by what the engine does about an error.

    SyncEngineError                 base; carries structured context and an exit code
    ├── ConfigError                 the pipeline is invalid; raised before any I/O (exit 2)
    │   └── PipelineInvalid         many located problems at once
    ├── RecordError                 one record cannot be mapped or written; it is dead-lettered, the run goes on
    ├── TransientError              a retry may succeed (network, 5xx, 429, locked database)
    └── RunFailed                   the run stops; state keeps only what was acknowledged (exit 3)
        ├── ConnectError            a source or destination could not be reached or refused us
        ├── DeleteGuardTripped      a snapshot would delete more than the allowed share
        └── ErrorBudgetExceeded     more records failed than the sync's error budget allows

Adapters translate third-party exceptions into these once, at their boundary, with
``raise ... from exc``; nothing downstream matches exception strings.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_RECORD_ERRORS = 1
EXIT_INVALID = 2
EXIT_FAILED = 3
EXIT_DISCONNECTED = 5
"""A sync asked for by name (or every sync selected) is disconnected: nothing of it ran."""


class SyncEngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class ConfigError(SyncEngineError):
    """The pipeline or a value in it is wrong; nothing has run."""

    exit_code = EXIT_INVALID


@dataclass(frozen=True, order=True)
class Problem:
    """One located validation problem."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class PipelineInvalid(ConfigError):
    """Every problem found in a pipeline file, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class RecordError(SyncEngineError):
    """One record failed; it goes to the dead-letter store and the run goes on."""

    exit_code = EXIT_RECORD_ERRORS

    def __init__(self, message: str, *, key: str | None = None, field: str | None = None,
                 location: str | None = None, raw: object = None) -> None:
        super().__init__(message, key=key, field=field, location=location)
        self.key = key
        self.field = field
        self.location = location
        self.raw = raw
        """What a source could read of a record it could not turn into one (a CSV row, a line)."""

    def describe(self) -> str:
        """``key 'L1', field 'amount' (pipeline.yml:14): 'abc' is not a decimal number``."""
        parts = []
        if self.key is not None:
            parts.append(f"key '{self.key}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        where = f" ({self.location})" if self.location else ""
        return (", ".join(parts) + where + ": " if parts or where else "") + self.message


class TransientError(SyncEngineError):
    """A failure that a retry may cure; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunFailed(SyncEngineError):
    """The run stops; everything acknowledged before stays, nothing half-written."""

    exit_code = EXIT_FAILED


class ConnectError(RunFailed):
    """A server could not be reached, refused the credentials or presented an unknown identity."""


class DeleteGuardTripped(RunFailed):
    """A snapshot run would delete more than the configured share of known records."""


class ErrorBudgetExceeded(RunFailed):
    """Too many records of one sync failed (``max_error_share`` / ``max_errors``): the sync stops."""


class Disconnected(SyncEngineError):
    """A sync that was disconnected (``syncengine disconnect``) was asked to run; nothing of it ran."""

    exit_code = EXIT_DISCONNECTED


class Stopped(RunFailed):
    """The run was asked to stop (SIGTERM to ``serve``): the batch in flight was committed, nothing more is sent."""
