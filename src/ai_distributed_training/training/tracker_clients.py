"""The trackers a job asks for, made; the MLflow and W&B ones (their libraries are optional
extras, imported only when a job asks for them).

MLflow: the ``mlflow-skinny`` client (full mlflow pulls 87 packages) into a tracking URI, by
default a SQLite database beside the runs (``sqlite:///<runs_dir>/mlflow.db``, artifacts in
``<runs_dir>/mlflow-artifacts``). W&B: offline unless ``wandb_mode`` or ``WANDB_MODE`` says
otherwise; its files go to ``<run_dir>/wandb`` (``wandb sync`` uploads them later).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.sections import TrackingSection
from .trackers import (
    ARTIFACTS,
    TRACKERS_FILE,
    CsvLogger,
    MetricLogger,
    TensorBoardLogger,
    TrackerRun,
    flat_params,
    now_ms,
    read_state,
    scalars,
)


def make_loggers(tracking: TrackingSection) -> list[MetricLogger]:
    """The trackers ``tracking`` asks for, built-in ones made (their libraries are imported
    when they open), the user's as given. Prepare has resolved the MLflow URI and W&B mode."""
    made: dict[str, Callable[[], MetricLogger]] = {
        "csv": CsvLogger,
        "tensorboard": TensorBoardLogger,
        "mlflow": lambda: MlflowLogger(str(tracking.mlflow_tracking_uri)),
        "wandb": lambda: WandbLogger(str(tracking.wandb_mode)),
    }
    own = [t for t in tracking.trackers if not isinstance(t, str)]
    return [made[name]() for name in tracking.tracker_names] + own


def end_runs(run_dir: Path | None, names: list[str], *, ok: bool) -> None:
    """In the caller, when the job ended: the finished run's files as artifacts of its MLflow
    and W&B runs, and their final status (the workers cannot: the report is written after
    them)."""
    state = read_state(run_dir / TRACKERS_FILE) if run_dir else {}
    if run_dir is None or not state:
        return
    if "mlflow" in names and "mlflow" in state:
        end_mlflow_run(state["mlflow"], run_dir, ok)
    if "wandb" in names and "wandb" in state:
        end_wandb_run(state["wandb"], run_dir, ok)


#: MLflow takes at most this many metrics (and 100 params) in one batch call.
_MLFLOW_BATCH = 1000


class MlflowLogger(MetricLogger):
    """Metrics, the config as params, and (from the caller, at the end) the run's files as
    artifacts, into one MLflow run per run directory."""

    name = "mlflow"

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._run_id: str | None = None

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self._client = client = MlflowClient(self.tracking_uri)
        if run.resumed and run.resumed.get("run_id"):
            self._run_id = str(run.resumed["run_id"])
            client.update_run(self._run_id, status="RUNNING")
            return run.resumed
        experiment = client.get_experiment_by_name(run.project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(
                run.project, artifact_location=_artifact_location(self.tracking_uri, run)
            )
        self._run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
        params = [Param(k, v) for k, v in flat_params(run.config).items()]
        for i in range(0, len(params), 100):
            client.log_batch(self._run_id, params=params[i : i + 100])
        return {"run_id": self._run_id, "tracking_uri": self.tracking_uri}

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if self._run_id is None or record["type"] == "start":
            return
        stamp, step = now_ms(record), int(record["step"])
        metrics = [Metric(k, v, stamp, step) for k, v in scalars(record).items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def close(self) -> None:
        if self._run_id is not None:  # a restart sets it RUNNING again; the caller ends it
            self._client.set_terminated(self._run_id, status="KILLED")


def _artifact_location(tracking_uri: str, run: TrackerRun) -> str | None:
    """Artifacts beside a local SQLite database (MLflow's default is ./mlruns, wherever the
    process happens to run); a server's own default otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "mlflow-artifacts").resolve().as_uri()


def end_mlflow_run(state: dict[str, Any], run_dir: Path, ok: bool) -> None:
    """In the caller, when the job ended: the run's files as artifacts, and its status."""
    from mlflow import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    if ok:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(state["run_id"], str(run_dir / name))
    client.set_terminated(state["run_id"], status="FINISHED" if ok else "FAILED")


class WandbLogger(MetricLogger):
    """Metrics (``<type>/<name>`` at the record's step) and the config into one W&B run per
    run directory, offline unless configured otherwise."""

    name = "wandb"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._run: Any = None

    def open(self, run: TrackerRun) -> dict[str, Any] | None:
        self._run = _wandb_init(run.run_dir, run.project, self.mode, run.resumed, run)
        return {"run_id": self._run.id, "project": run.project, "mode": self.mode}

    def log(self, record: dict[str, Any]) -> None:
        if self._run is not None and record["type"] != "start":
            self._run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()


def _wandb_init(
    run_dir: Path | None,
    project: str,
    mode: str,
    resumed: dict[str, Any] | None,
    run: TrackerRun | None = None,
) -> Any:
    import wandb

    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
    return wandb.init(
        project=project,
        name=run.name if run else None,
        id=str(resumed["run_id"]) if resumed else None,
        resume="allow",
        mode=mode,  # type: ignore[arg-type]
        dir=str(run_dir) if run_dir else None,
        config=run.config if run else None,
        settings=settings,
        reinit="create_new",
    )


def end_wandb_run(state: dict[str, Any], run_dir: Path, ok: bool) -> None:
    """In the caller, when the job ended: the run's files as an artifact of its W&B run."""
    import wandb

    if not ok:
        return
    resumed = _wandb_init(run_dir, state["project"], state["mode"], state)
    artifact = wandb.Artifact(f"run-{state['run_id']}", type="run-files")
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            artifact.add_file(str(run_dir / name))
    resumed.log_artifact(artifact)
    resumed.finish()
