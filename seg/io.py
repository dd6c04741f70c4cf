"""Reading tensor files safely (checkpoints, weights, exported TorchScript models) and writing them atomically."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from seg.errors import MissingFileError, UserError

# The name of the JSON file of class names, palette and settings that travels inside an exported model.
METADATA_FILE = "metadata.json"


class UnsafeFileError(UserError, ValueError):
    """A file that is not a plain tensor archive (it needs code to load, or is corrupt)."""


def safe_load(path: Union[str, Path], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    ``weights_only=True`` never runs code stored in the file: a pickle that carries a ``__reduce__`` payload is
    refused here instead of executed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        dtype = re.search(r"GLOBAL torch\.(\w+) was not an allowed global", str(error))
        if dtype and isinstance(getattr(torch, dtype.group(1), None), torch.dtype):
            raise UnsafeFileError(
                f"cannot read {what} {path} with torch {torch.__version__}: it holds torch.{dtype.group(1)} tensors, "
                "which this torch cannot load; load it with the newer torch that wrote it") from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeFileError(
            f"refusing to load {what} {path}: it is not a plain tensor file and would need to run code "
            f"({first_line}); only load files from sources you trust, re-saved as plain state dicts") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise UnsafeFileError(
            f"cannot read {what} {path}: the file is truncated or corrupt ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """Write ``obj`` with ``torch.save`` so that ``path`` is always either the old file or the new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed over ``path``
    (atomic on POSIX); a failure midway removes the temporary file and leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_torchscript(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/``), decided without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_torchscript(path: Union[str, Path], map_location=None) -> Tuple[torch.jit.ScriptModule, Dict]:
    """``torch.jit.load`` plus the export's metadata. TorchScript is code: load only files you trust."""
    extra = {METADATA_FILE: ""}
    with torchscript_is_the_contract():
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    return module.eval(), json.loads(extra[METADATA_FILE] or "{}")


@contextlib.contextmanager
def torchscript_is_the_contract():
    """Silence PyTorch's TorchScript deprecation notices: the deployed file format is fixed by this project's
    contract (``format=export`` writes the torch.export successor)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield
