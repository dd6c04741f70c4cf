"""User-facing errors: bad input a user can fix. Scripts print them as one line instead of a traceback."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys


class UserError(Exception):
    """Base class of errors caused by input (a file, a config value) rather than by a bug."""


class MissingFileError(UserError, FileNotFoundError):
    pass


class Interrupted(Exception):
    """A run that stopped on a signal after saving its checkpoint (``seg.engine.interrupt``): the script prints the
    message (empty on DDP ranks other than 0) and exits with ``exit_code`` (128 + the signal number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def exit_on_user_error(main):
    """Wrap a script's entry point: a ``UserError`` becomes ``error: <message>`` on stderr and exit code 1; an
    ``Interrupted`` run its one line and its exit code.

    In a job of Hydra's submitit launcher (``SUBMITIT_EXECUTOR`` set) the ``UserError`` is raised on after its line:
    submitit returns an exception to the launching command, which then fails with it, whereas an exit would end the
    job without a result and leave the launching command waiting (docs/slurm.md).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Interrupted as stop:
            if str(stop):
                print(stop, file=sys.stderr, flush=True)
                record_in_log_files(stop, level=logging.WARNING)
            sys.exit(stop.exit_code)
        except UserError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            record_in_log_files(error)
            if os.environ.get("SUBMITIT_EXECUTOR"):
                raise
            sys.exit(1)

    return wrapper


def user_message(error: UserError) -> str:
    """The error's own message, also when a data-loader worker raised it.

    torch re-raises an exception from a worker process as the same type with the worker's whole traceback as
    its message ("Caught DatasetError in DataLoader worker process 0. Original Traceback ... DatasetError: <the
    message>"); the part after the last ``<type name>:`` line is the message the worker raised.
    """
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    name = re.escape(type(error).__name__)
    parts = re.split(rf"^(?:[\w.]+\.)?{name}: ", text, flags=re.MULTILINE)
    return parts[-1].strip() if len(parts) > 1 else text


def record_in_log_files(error: Exception, handlers=None, level: int = logging.ERROR) -> None:
    """Add the error to the run's log files (e.g. train.log) without printing it a second time on the console.

    ``handlers``: the handlers to write to (default: every file handler of the root logger).
    """
    record = logging.getLogger("seg").makeRecord("seg", level, __file__, 0, "%s", (user_message(error),),
                                                 None)
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
