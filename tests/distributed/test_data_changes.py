"""A data file replaced between a kill (or the caller's end) and the resume: refused, naming the
file, unless the user asks to continue on the new data (then said in events.log)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_distributed_training import Callback, DistributedTraining, WorkerFailedError
from ai_distributed_training.errors import ConfigError
from ai_distributed_training.host import file_fingerprint
from ai_distributed_training.training.callbacks import CallbackContext

pytestmark = pytest.mark.distributed

MODEL = {"model_name": "m", "hidden_sizes": [8]}


def _table(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(200, 5)).astype(np.float32)
    table[:, -1] = rng.integers(0, 2, size=200)
    return table


class ReplaceFileAt(Callback):
    """On rank 0, after ``step``: the data file gets other values of the same shape."""

    def __init__(self, path: str, step: int) -> None:
        self.path, self.step = path, step

    def on_step_end(self, ctx: CallbackContext) -> None:
        if ctx.rank == 0 and ctx.step == self.step:
            np.save(self.path, _table(seed=1))


def test_a_npy_file_replaced_before_a_restart_stops_the_job_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "table.npy"
    np.save(path, _table(seed=0))
    with pytest.raises(WorkerFailedError) as caught:
        DistributedTraining(
            epochs=2,
            batch_size=32,
            checkpoint_every=2,
            validation_split=0.0,
            callbacks=[ReplaceFileAt(str(path), step=3)],
            fault_injection=[{"kind": "kill", "rank": 1, "step": 5}],
        ).train_distributed(MODEL, str(path), nodes=2)
    message = str(caught.value)
    assert "DataChangedError: data file " in message and str(path) in message
    assert "allow_data_change=True" in message
    assert "not retried" in message or "restart" in message  # the restart rule stopped it


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_resume_auto_on_a_replaced_file_is_refused_unless_allowed(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"table{suffix}"

    def write(seed: int) -> None:
        if suffix == ".npy":
            np.save(path, _table(seed))
        else:
            np.savetxt(path, _table(seed), delimiter=",", header="a,b,c,d,label", comments="")

    write(0)
    trainer = DistributedTraining(
        epochs=1, batch_size=50, validation_split=0.0, checkpoint_dir=str(tmp_path / "ckpt")
    )
    trainer.train_distributed(MODEL, str(path), nodes=2)
    before = file_fingerprint(path)
    write(1)  # the same shape and size, other values
    assert file_fingerprint(path) != before
    with pytest.raises(ConfigError, match=rf"data file .*{path.name} \(.* -> .*\): changed since"):
        trainer.train_distributed(MODEL, str(path), nodes=2, epochs=2, resume="auto")
    if suffix == ".csv":
        return  # the allowed path is the same for both
    result = trainer.train_distributed(
        MODEL, str(path), nodes=2, epochs=2, resume="auto", allow_data_change=True
    )
    assert result["resumed_from"] and result["steps"] == 8
    events = (Path(result["run_dir"]) / "events.log").read_text()
    assert "on changed data (allow_data_change=True): data file" in events
