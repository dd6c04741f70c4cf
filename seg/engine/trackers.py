"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases (``logger=mlflow``, ``logger=wandb``, both).

``RunFiles`` (rank 0 only) hands every scalar it writes to TensorBoard to ``Trackers`` too, so the losses, the lr,
every evaluation's metrics and per-class scores reach each tracker under TensorBoard's tags. A tracker is a
convenience, never a reason to lose a training: one that cannot be imported or reached, or that fails later, is
one warning in train.log, and the run goes on without it (TensorBoard, metrics.jsonl and the checkpoints are the
record). The trackers' run ids are kept in the checkpoints, so a resume continues the same tracked run.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import netrc
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from seg.config import flatten

log = logging.getLogger(__name__)

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> pyproject.toml extra that installs it


class Trackers:
    """The open trackers behind one interface; a tracker whose call raises is dropped after one warning."""

    def __init__(self, trackers: List = ()):
        self.trackers = list(trackers)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self._each("log", lambda tracker: tracker.scalars(values, step))

    def artifact(self, path: Path) -> None:
        """Upload ``path`` (the best checkpoint) to the trackers whose ``log_checkpoint`` is set."""
        if Path(path).is_file():
            self._each("upload", lambda tracker: tracker.artifact(Path(path)) if tracker.log_checkpoint else None)

    def run_ids(self) -> Dict[str, str]:
        return {tracker.name: tracker.run_id for tracker in self.trackers}

    def close(self, finished: bool) -> None:
        self._each("close", lambda tracker: tracker.close(finished))
        self.trackers = []

    def _each(self, action: str, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as error:  # noqa: BLE001 - any tracker failure: one warning, never a dead run
                log.warning("logger=%s: could not %s (%s: %s); the run goes on without %s", tracker.name, action,
                            type(error).__name__, _first_line(error), tracker.name)
                self.trackers.remove(tracker)


def open_trackers(trackers: Mapping[str, Mapping], config: Mapping, run_dir: Path,
                  run_ids: Optional[Mapping[str, str]] = None) -> Trackers:
    """Start the trackers ``seg.config.tracker_kwargs`` names, each with its section's keys; ``config`` is the
    resolved configuration they record, ``run_ids`` the runs a resumed training logged to."""
    opened = []
    for name, options in trackers.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            log.warning("logger=%s: the %s package is not installed (pip install -e \".[%s]\"); the run goes on "
                        "without it", name, name, EXTRAS[name])
            continue
        try:
            opened.append(OPENERS[name](module, options, config, Path(run_dir), (run_ids or {}).get(name)))
        except Exception as error:  # noqa: BLE001 - unreachable server, bad credentials, ...: one warning
            log.warning("logger=%s: cannot start (%s: %s); the run goes on without it", name, type(error).__name__,
                        _first_line(error))
    return Trackers(opened)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def default_run_name(run_dir: Path) -> str:
    """``<date>/<time>`` for Hydra's ``outputs/<date>/<time>/``: the run folder named the way a user finds it."""
    run_dir = Path(run_dir).absolute()
    return f"{run_dir.parent.name}/{run_dir.name}"


# -- MLflow ------------------------------------------------------------------------------------------------------

class MLflowTracker:
    """One MLflow run through ``MlflowClient``: params and ``config.yaml`` at the start, metrics at their step.

    ``mlflow.tracking_uri`` null means MLflow's own default, which follows ``MLFLOW_TRACKING_URI`` and otherwise
    depends on its version (MLflow 3: ``sqlite:///mlflow.db`` in the working directory with artifacts in
    ``./mlruns/``, or ``./mlruns/`` where that folder already holds runs; MLflow 2: ``./mlruns/``), the store its
    ``mlflow ui`` opens from the same directory.
    """

    name = "mlflow"
    PARAM_LENGTH = 500  # longer values (a recorded split's image list) are only in the config.yaml artifact
    METRIC_KEY = re.compile(r"[^\w\-. /:]")  # MLflow's allowed key characters

    def __init__(self, mlflow, options: Mapping, config: Mapping, run_dir: Path, run_id: Optional[str]):
        from mlflow.entities import Param

        self.log_checkpoint = bool(options.get("log_checkpoint"))
        uri = options.get("tracking_uri") or None
        with _fail_fast():  # an unreachable server: one quick warning, not minutes of retries
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            self.run_id = self._resumed(run_id)
            if self.run_id is None:
                experiment = options.get("experiment") or "seg"
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
                run = self.client.create_run(experiment_id, run_name=options.get("run_name") or default_run_name(
                    run_dir), tags={"run_dir": str(Path(run_dir).absolute())})
                self.run_id = run.info.run_id
                params = [Param(key[:250], str(value)) for key, value in flatten(config).items()
                          if len(str(value)) <= self.PARAM_LENGTH]
                for start in range(0, len(params), 100):  # MLflow's limit per batch
                    self.client.log_batch(self.run_id, params=params[start:start + 100])
            self.client.log_dict(self.run_id, dict(config), "config.yaml")
        log.info("logger=mlflow: run %s in %s", self.run_id, self.client.tracking_uri)

    def _resumed(self, run_id: Optional[str]) -> Optional[str]:
        """The run a resumed training logged to, where this store has it (another store: a new run)."""
        if not run_id:
            return None
        try:
            self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - not in this store
            log.info("logger=mlflow: run %s of the checkpoint is not in %s: starting a new run", run_id,
                     self.client.tracking_uri)
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(self.METRIC_KEY.sub("_", key), float(value), stamp, int(step))
                   for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints")

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


@contextlib.contextmanager
def _fail_fast():
    """MLflow retries a failed HTTP request with backoff for minutes by default: at the start, fail at once (the
    user's own settings of these variables win)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {name: os.environ.get(name) for name in names}
    for name, value in names.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


# -- Weights & Biases --------------------------------------------------------------------------------------------

class WandbTracker:
    """One W&B run, written under the run folder (``<run>/wandb/``); offline where no API key is known.

    ``wandb.mode`` null: ``WANDB_MODE`` where set, else online with an API key (``WANDB_API_KEY`` or ``wandb
    login``'s ~/.netrc entry) and offline without one; ``wandb sync <run>/wandb/offline-run-*`` uploads it later.
    """

    name = "wandb"

    def __init__(self, wandb, options: Mapping, config: Mapping, run_dir: Path, run_id: Optional[str]):
        self.log_checkpoint = bool(options.get("log_checkpoint"))
        self.wandb = wandb
        mode = options.get("mode") or os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
        self.run = wandb.init(project=options.get("project") or "seg", entity=options.get("entity"),
                              name=options.get("name") or default_run_name(run_dir), dir=str(run_dir),
                              config=dict(config), mode=mode, id=run_id, resume="allow" if run_id else None)
        self.run_id = self.run.id
        log.info("logger=wandb: run %s (%s) in %s", self.run_id, mode, self.run.dir)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=int(step))

    def artifact(self, path: Path) -> None:
        artifact = self.wandb.Artifact(f"{self.run_id}-best", type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


OPENERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}
