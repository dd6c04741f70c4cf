"""No command overwrites what it did not write: the one check every command that writes files runs before any work.

A command names the files (and folders) it is about to write, its inputs, the kind of output it writes and the
user's ``overwrite``; ``check_outputs`` then refuses, with one line naming the file and the option:

* an output that is one of the inputs (the same path, a symbolic or hard link to it), or an existing file inside an
  input folder that is not an earlier output of its own (a mask in ``labels/`` of predict.py's input folder, a
  run folder inside the dataset): ``OutputIsInput``, whatever ``overwrite`` says;
* an output whose folder is a file, or a file output that is a folder: ``OutputExists``, whatever ``overwrite`` says;
* an existing file that is not an earlier output of the same kind: ``OutputExists`` unless ``overwrite`` is true.

Why the kind is read from the file itself, not from its name: ``best.pt``, ``model.ts`` or ``metrics.json`` may be
anything a user put there, and a name proves nothing. How each kind is recognised (``KINDS``):

* ``exported model`` (export.py): a TorchScript or torch.export archive whose ``extra/metadata.json`` holds
  ``seg_version``, or an ONNX file whose metadata property ``metadata.json`` does (what ``seg.export`` writes);
* ``evaluation`` (evaluate.py): ``metrics.json`` holding ``mIoU``, ``per_class_iou`` and ``num_images``;
  ``confusion_matrix.csv`` starting with ``label \\ prediction``; ``confusion_matrix.png`` beside such a
  ``metrics.json``;
* ``benchmark`` (benchmark.py): a JSON object with ``"schema": "seg.benchmark/..."``; ``models table``
  (models_table.py): a JSON list of rows with ``name``, ``params_m``, ``gflops`` and ``ratio``;
* ``figure`` (receptive_field.py): a PNG whose ``Software`` text is ``FIGURE_SOFTWARE``;
* ``predictions`` (predict.py), whose label maps, overlays and videos carry no room for a mark: a file listed in
  ``MANIFEST`` (``.seg_outputs.json``) of a folder above it, which the command writes (``record_outputs``) right
  after the check and before its first file, so that an interrupted run's files count as its own too;
* ``None`` (a training run, the dataset tools, the example writers): nothing is recognised, every existing file
  needs ``overwrite``. A training's run folder is its own output only for a resume of that run (``run_outputs``).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

from seg.errors import UserError

log = logging.getLogger("seg.outputs")

PathLike = Union[str, Path]
MANIFEST = ".seg_outputs.json"  # {relative path: kind} of the files a command wrote into a folder
FIGURE_SOFTWARE = "seg.analysis"
RUN_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl")  # what a fresh training replaces


class OutputExists(UserError, FileExistsError):
    """An output path holds something this command did not write."""


class OutputIsInput(UserError, ValueError):
    """An output path is one of the command's inputs (or a file inside an input folder)."""


# -- recognisers: path -> whether the file is an earlier output of that kind -------------------------------------

def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def exported_metadata(path: PathLike) -> Dict:
    """The ``metadata.json`` seg.export writes into a TorchScript / torch.export archive or an ONNX file ({} if none).

    Read without loading the model: a zip's ``*/extra/metadata.json`` entry, or for ONNX the property's bytes.
    """
    from seg.io import METADATA_FILE  # imports torch: only for files that may be models

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(f"extra/{METADATA_FILE}")]
                return json.loads(archive.read(names[0]) or b"{}") if names else {}
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # ONNX: metadata_props {key: "metadata.json", value: "{...}"}: the key, a tag and a length, the JSON
            at = data.rfind(METADATA_FILE.encode())
            start = data.find(b"{", at, at + 32) if at >= 0 else -1
            if start < 0:
                return {}
            text = data[start:start + (1 << 24)].decode("utf-8", errors="replace")
            return json.JSONDecoder().raw_decode(text)[0]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}


def is_exported_model(path: Path) -> bool:
    return "seg_version" in exported_metadata(path)


def is_evaluation(path: Path) -> bool:
    if path.name == "confusion_matrix.csv":
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.readline().startswith("label \\ prediction")
        except (OSError, UnicodeDecodeError):
            return False
    if path.name == "confusion_matrix.png":
        path = path.with_name("metrics.json")
    metrics = _json(path)
    return isinstance(metrics, dict) and {"mIoU", "per_class_iou", "num_images"} <= set(metrics)


def is_benchmark(path: Path) -> bool:
    result = _json(path)
    return isinstance(result, dict) and str(result.get("schema", "")).startswith("seg.benchmark/")


def is_models_table(path: Path) -> bool:
    rows = _json(path)
    return (isinstance(rows, list) and bool(rows)
            and all(isinstance(r, dict) and {"name", "params_m", "gflops", "ratio"} <= set(r) for r in rows))


def is_figure(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get("Software") == FIGURE_SOFTWARE
    except (OSError, ValueError):
        return False


_MANIFESTS: Dict[tuple, Dict] = {}  # (path, mtime, size) -> its content: read once per check of many files


def _manifest(folder: Path) -> Optional[Dict]:
    try:
        stat = (folder / MANIFEST).stat()
    except OSError:
        return None
    key = (str(folder / MANIFEST), stat.st_mtime_ns, stat.st_size)
    if key not in _MANIFESTS:
        listed = _json(folder / MANIFEST)
        _MANIFESTS.clear()
        _MANIFESTS[key] = listed if isinstance(listed, dict) else {}
    return _MANIFESTS[key]


def is_listed(path: Path, kind: str) -> bool:
    """Listed as ``kind`` in the ``MANIFEST`` of the nearest folder above ``path`` that has one."""
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        listed = _manifest(folder)
        if listed is not None:
            return listed.get(path.relative_to(folder).as_posix()) == kind
    return False


# kind -> (what an earlier output of it is, in a message; its recogniser)
KINDS: Dict[str, tuple] = {
    "exported model": ("a model exported by scripts/export.py", is_exported_model),
    "evaluation": ("an output of scripts/evaluate.py", is_evaluation),
    "benchmark": ("a result of scripts/benchmark.py", is_benchmark),
    "models table": ("a table of scripts/models_table.py", is_models_table),
    "figure": ("a figure of scripts/receptive_field.py or scripts/make_readme_figure.py", is_figure),
    "predictions": ("a file scripts/predict.py wrote", lambda path: is_listed(path, "predictions")),
}


def recognised(path: Path, kind: Optional[str]) -> bool:
    return kind is not None and path.is_file() and KINDS[kind][1](path)


# -- the check ---------------------------------------------------------------------------------------------------

def _holds_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*"))


class _Folders:
    """Per folder, once (a predict run checks tens of thousands of files in a few folders): its real path and the
    file, if any, that stands where it or a folder above it should be."""

    def __init__(self):
        self.known: Dict[Path, tuple] = {}

    def __call__(self, folder: Path) -> tuple:
        if folder not in self.known:
            blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            self.known[folder] = (os.path.realpath(folder), blocked)
        return self.known[folder]


def _input_of(target: Path, real: str, exists: bool, sources: list, kind: Optional[str]) -> Optional[str]:
    """How ``target`` is one of the ``sources`` (``(option, path, real path)``), or None: the same path, the same
    file (a hard link), or an existing file inside an input folder that is not an earlier output of ``kind``."""
    for name, source, source_real in sources:
        if real == source_real:
            return f"is {name}={source}"
        if not exists:
            continue
        if real.startswith(source_real.rstrip(os.sep) + os.sep):
            if os.path.isfile(real) and not recognised(target, kind):
                return f"is a file inside {name}={source}"
        elif os.path.isfile(source) and os.path.samefile(target, source):
            return f"is the same file as {name}={source}"
    return None


def check_outputs(outputs: Iterable[PathLike], inputs: Mapping[str, Optional[PathLike]], kind: Optional[str] = None,
                  overwrite: bool = False, folders: Iterable[PathLike] = (), key: str = "output",
                  option: str = "overwrite=true") -> None:
    """Refuse, before any work, what would replace an input or a file this command did not write (module docstring).

    ``outputs``: the files the command will write; ``folders``: folders it will fill, which count as existing when
    they hold any file; ``inputs``: option name -> the file or folder it reads (``None``: not given); ``kind``: a key
    of ``KINDS`` or ``None``; ``key``: the option that chooses the outputs; ``option``: how the user says
    ``overwrite`` (``--overwrite`` for argparse tools).
    """
    sources = [(name, Path(p).expanduser()) for name, p in inputs.items() if p not in (None, "")]
    sources = [(name, source, os.path.realpath(source)) for name, source in sources]
    folder_info = _Folders()
    replaced = []
    for target, is_folder in [(Path(p), False) for p in outputs] + [(Path(p), True) for p in folders]:
        target = target.expanduser()
        real_parent, blocked = folder_info(target.parent)
        exists = os.path.lexists(target)
        real = os.path.realpath(target) if exists and os.path.islink(target) else os.path.join(real_parent, target.name)
        how = _input_of(target, real, exists, sources, kind)
        if how:
            raise OutputIsInput(f"{target} {how}, an input of this command: no option (not even {option}) lets a "
                                f"command write over its inputs; choose another {key}")
        if blocked is not None:
            raise OutputExists(f"cannot write {target}: {blocked} is a file, not a folder; choose another {key}")
        if not exists:
            continue
        if not is_folder and target.is_dir():
            raise OutputExists(f"cannot write {target}: it is a folder; choose another {key}")
        if (is_folder and not _holds_files(target)) or recognised(target, kind):
            continue
        if not overwrite:
            what = f"exists already and is not {KINDS[kind][0]}" if kind else "exists already"
            raise OutputExists(f"{target} {what}: choose another {key}, or pass {option} to replace it")
        replaced.append(target)
    if replaced:
        log.warning("%s: replacing %d existing file(s) or folder(s): %s", option, len(replaced),
                    ", ".join(map(str, replaced[:3])) + (", ..." if len(replaced) > 3 else ""))


def record_outputs(folder: PathLike, files: Sequence[PathLike], kind: str) -> None:
    """List ``files`` (under ``folder``) as this command's ``kind`` in ``folder/MANIFEST``, before writing them, so
    that a later run of the same command recognises them (``is_listed``)."""
    folder = Path(folder)
    listed = _json(folder / MANIFEST)
    listed = listed if isinstance(listed, dict) else {}
    base = os.path.abspath(folder)
    listed.update({Path(os.path.relpath(os.path.abspath(f), base)).as_posix(): kind for f in files})
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(listed, indent=0, sort_keys=True) + "\n")
    os.replace(temporary, folder / MANIFEST)


def run_outputs(run_dir: PathLike, resume: Optional[PathLike], inputs: Mapping[str, Optional[PathLike]],
                overwrite: bool) -> None:
    """train.py: a fresh training (or a resume of another run) into a folder that holds a run's checkpoints or
    ``metrics.jsonl`` would replace them; a resume of that folder's own run continues it."""
    run_dir = Path(run_dir)
    if resume is not None and Path(resume).parent.name == "checkpoints" \
            and Path(resume).resolve().parent.parent == run_dir.resolve():
        return
    check_outputs([run_dir / name for name in RUN_FILES], inputs, None, overwrite,
                  key="hydra.run.dir (or resume=<that run> to continue it)")
