"""Reading tensor files safely (checkpoints, weights, exported TorchScript models) and writing them atomically."""

from __future__ import annotations

import _codecs
import _compat_pickle
import builtins
import collections
import contextlib
import errno
import json
import os
import pickle
import re
import tempfile
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Tuple, Union

import torch

from seg.errors import MissingFileError, UserError

# The name of the JSON file of class names, palette and settings that travels inside an exported model.
METADATA_FILE = "metadata.json"


class UnsafeFileError(UserError, ValueError):
    """A file that is not a plain tensor archive (it needs code to load, is corrupt, or is another kind of file)."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 (and TorchScript archives)
PICKLE_PROTOCOL = 0x80       # the first byte of a protocol >= 2 pickle: torch.save's legacy format
LFS_POINTER = b"version https://git-lfs"
# Other kinds of file people pass as weights, by their first bytes: what to call them.
SIGNATURES = ((b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 file (e.g. Keras .h5 weights)"),
              (b"\x1f\x8b", "a gzip archive"), (b"PK\x05\x06", "an empty zip archive"))


def file_kind(path: Union[str, Path]) -> str:
    """``"torch"`` for a file in one of torch.save's formats (zip or pickle), else what the file plainly is.

    Decided from the first bytes, so that a web page, a Git LFS pointer, a JSON or text file is named as such
    instead of reaching the unpickler (which answers junk with KeyError, IndexError, UnicodeDecodeError ...).
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith(ZIP_MAGIC) or head[0] == PICKLE_PROTOCOL:
        return "torch"
    if head.startswith(LFS_POINTER):
        return ("a Git LFS pointer (a small text file standing in for the real one): run `git lfs pull` in its "
                "repository to download the file itself")
    for magic, name in SIGNATURES:
        if head.startswith(magic):
            return name
    if len(head) > 9 and head[8:10] == b'{"':
        return "a safetensors file (convert it: torch.save(safetensors.torch.load_file(path), new_path))"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return "an HTML or XML page (a download that saved a web page instead of the file?)"
    if text[:1] in ("{", "["):
        return "a JSON file"
    if "\ufffd" not in text and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it starts with {first!r})"
    return "binary data of an unknown format"


def describe(obj: Any) -> str:
    """A few words on what a loaded object is, for errors that say what a file holds versus what was expected."""
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:4]]
        more = ", ..." if len(obj) > 4 else ""
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a state dict of {len(obj)} tensors ({', '.join(keys)}{more})"
        return f"a dict with keys {', '.join(keys)}{more}" if obj else "an empty dict"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


class NeedsCodeError(UnsafeFileError):
    """A file whose pickle names classes or functions beyond tensors and plain containers: ``safe_load`` refuses
    it; another project's file of that kind (its framework's objects, NumPy values) may be read with
    ``load_foreign``."""


def safe_load(path: Union[str, Path], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file and what it is instead.

    ``weights_only=True`` never runs code stored in the file: a pickle that carries a ``__reduce__`` payload is
    refused here instead of executed. Whatever else the file holds (junk, a truncated archive, a web page), the
    result is the loaded object or an ``UnsafeFileError``: no other exception escapes.
    """
    path = _torch_file(path, what)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 200": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        dtype = re.search(r"GLOBAL torch\.(\w+) was not an allowed global", str(error))
        if dtype and isinstance(getattr(torch, dtype.group(1), None), torch.dtype):
            raise UnsafeFileError(
                f"cannot read {what} {path} with torch {torch.__version__}: it holds torch.{dtype.group(1)} "
                "tensors, which this torch cannot load; load it with the newer torch that wrote it") from None
        needs = re.search(r"GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose module", str(error))
        if needs:
            raise NeedsCodeError(
                f"refusing to load {what} {path}: it is not a plain tensor file and would need to run code "
                f"({needs.group(1) or needs.group(2)}) to load; only load files from sources you trust, re-saved as "
                "plain state dicts") from None
        raise UnsafeFileError(_corrupt(what, path, error)) from None
    except Exception as error:  # junk reaches torch's unpickler and zip reader in many ways; none may escape
        raise UnsafeFileError(_corrupt(what, path, error)) from None


def _torch_file(path: Union[str, Path], what: str) -> Path:
    """``path`` if it is a file in one of torch.save's formats (and no TorchScript program), else the one-line
    ``MissingFileError`` / ``UnsafeFileError`` that says what it is instead."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    expected = f"the {what} must be a file written by torch.save"
    try:
        kind = file_kind(path)
    except OSError as error:
        raise UnsafeFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if kind != "torch":
        raise UnsafeFileError(f"{path} is {kind}; {expected}")
    if is_torchscript(path):
        raise UnsafeFileError(f"{path} is an exported TorchScript model (a program); {expected}")
    return path


class Inert:
    """What a class or function named in another project's file becomes: a record of its name and of the arguments
    and state the file gives it. Constructing, filling and "calling" it (pickle's REDUCE, NEWOBJ, BUILD, SETITEMS,
    APPENDS) only stores values; nothing of the named class or function is imported or run."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        inert = super().__new__(cls)
        inert.args, inert.kwargs, inert.state, inert.items, inert.elements = args, kwargs, None, {}, []
        return inert

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.elements.append(value)

    def extend(self, values):
        self.elements.extend(values)

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    """What pickled NumPy arrays, scalars and dtypes name (numpy 1.x ``numpy.core``, 2.x ``numpy._core``): array
    and scalar constructors from raw bytes, which run nothing of the file's."""
    try:
        import numpy
    except ImportError:  # then they stay inert
        return {}
    core = numpy._core if hasattr(numpy, "_core") else numpy.core
    allowed = {("numpy", "ndarray"): numpy.ndarray, ("numpy", "dtype"): numpy.dtype}
    for package in ("numpy.core", "numpy._core"):  # files written under numpy 1.x and 2.x
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        if hasattr(core.numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    """Classes and functions a file of another project may use: those ``torch.load(weights_only=True)`` allows
    (tensors, storages, dtypes, ``OrderedDict``), plain containers, and NumPy's array constructors."""
    allowed: Dict[Tuple[str, str], Any] = {}
    torch_allowed = getattr(torch._weights_only_unpickler, "_get_allowed_globals", dict)()
    for qualified, value in torch_allowed.items():
        module, _, name = qualified.rpartition(".")
        allowed[(module, name)] = value
    allowed.update({("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _codecs.encode,
                    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
                    ("torch", "Size"): torch.Size})
    for name in ("set", "frozenset", "bytearray", "complex", "slice"):
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed.update(_numpy_globals())
    return allowed


class InertUnpickler(pickle.Unpickler):
    """An unpickler whose every global is either on ``_allowed_globals`` or an ``Inert`` stand-in."""

    allowed: Dict[Tuple[str, str], Any] = {}
    stand_ins: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not InertUnpickler.allowed:
            InertUnpickler.allowed = _allowed_globals()
        key = (module, name)  # Python 2 names, as protocol-2 pickles (torch.save's) write builtins: __builtin__.set
        key = _compat_pickle.NAME_MAPPING.get(key, (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        module, name = key
        if key in self.allowed:
            return self.allowed[key]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if key not in self.stand_ins:
            self.stand_ins[key] = type(name.rpartition(".")[2] or "Inert", (Inert,),
                                       {"qualified_name": f"{module}.{name}", "__module__": __name__})
        return self.stand_ins[key]


def _inert_load(file, **kwargs) -> Any:
    return InertUnpickler(file, **kwargs).load()


# What torch.load takes as ``pickle_module``: its ``Unpickler`` (torch subclasses it to read storages) and ``load``.
INERT_PICKLE = types.ModuleType("seg_inert_pickle", "pickle with every unknown global inert (seg.io.load_foreign)")
INERT_PICKLE.Unpickler = InertUnpickler
INERT_PICKLE.load = _inert_load


def load_foreign(path: Union[str, Path], what: str = "weights file") -> Any:
    """Read another project's ``torch.save`` file (mmsegmentation's, mmengine's ...) without running its code.

    Such files hold more than tensors: mmengine's ``message_hub`` pickles ``HistoryBuffer`` objects and NumPy
    values, which ``safe_load`` (``weights_only=True``) refuses. Here every class or function the file names that is
    not a tensor, a plain container or a NumPy array is read as an ``Inert`` record (its name, arguments and state)
    and never imported or called, so a payload such as ``os.system`` stays an inert record too. For this project's
    own checkpoints use ``safe_load``, which refuses such files outright.
    """
    path = _torch_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=INERT_PICKLE)
    except Exception as error:  # junk reaches the unpickler and zip reader in many ways; none may escape
        raise UnsafeFileError(_corrupt(what, path, error)) from None


def _corrupt(what: str, path: Path, error: Exception) -> str:
    """The one line for a file in torch's formats that does not load: torch's own reason, without its advice to
    retry with ``weights_only=False`` (which would run any code in the file)."""
    text = str(error)
    reason = re.search(r"WeightsUnpickler error: (.*)", text)
    reason = (reason.group(1) if reason else text.strip().split("\n")[0]).strip()
    if "weights_only" in reason or "Weights only" in reason:
        reason = ""
    if reason.startswith("PytorchStreamReader failed locating file data.pkl"):
        return f"{path} is a zip archive without data.pkl; the {what} must be a file written by torch.save"
    detail = f"{type(error).__name__}: {reason[:150]}" if reason else type(error).__name__
    return f"cannot read {what} {path}: the file is truncated or corrupt ({detail})"


class DiskFullError(UserError, OSError):
    pass


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain, or what torch's zip writer says when a write came up short."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and ("unexpected pos" in str(error)
                                                or "PytorchStreamWriter failed" in str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def replacing(path: Union[str, Path], hint: str = "free some space") -> Iterator[Path]:
    """Write a file under a temporary name next to ``path`` (same suffix: PIL, OpenCV and zipfile go by it), then
    rename it over ``path``. On any failure the temporary file is removed and ``path`` is left as it was; a full
    disk becomes a one-line ``DiskFullError`` naming ``path`` and ending in ``hint``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch's zip writer when a write came up short
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        kept = f"the previous {path.name} there is intact" if path.exists() else f"no earlier {path.name} exists"
        raise DiskFullError(f"disk full: could not write {path}; {kept} ({hint})") from None
    finally:
        temporary.unlink(missing_ok=True)


def atomic_save(obj: Any, path: Union[str, Path], hint: str = "free some space") -> None:
    """Write ``obj`` with ``torch.save`` so that ``path`` is always either the old file or the new one
    (``replacing``), and on disk (the file and its folder fsynced) before it counts."""
    path = Path(path)
    with replacing(path, hint) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def check_writable(folder: Union[str, Path]) -> None:
    """Create ``folder`` if needed and prove that a file can be written in it (``OSError`` otherwise).

    Checked by writing rather than with ``os.access``, which says yes to root on a read-only mount and cannot
    see a full disk.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as handle:
        handle.write(b"0")
        handle.flush()


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
