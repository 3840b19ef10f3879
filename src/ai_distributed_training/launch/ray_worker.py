"""What each Ray Train worker runs (``train_loop_per_worker`` of :mod:`.ray_launcher`).

Ray has started the process, set torchrun's variables (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ...) and joined the process group; from there it is the same rank code as under
torch elastic (:func:`..training.rank.run_rank`). Two things torch elastic does that Ray does
not, done here: counting restarts (a restarted group resumes from its newest checkpoint and
does not meet an injected fault again), and handing rank 0's result back (Ray returns rank 0's
return value as ``Result.return_value``). Each checkpoint is registered with Ray.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import torch
import torch.distributed as dist

from ..topology import RankEnv
from ..training.rank import run_rank
from ..training.tracking import configure_worker_logging

#: The file of a checkpoint registered with Ray: a pointer to the checkpoint we wrote.
POINTER_FILE = "adt_checkpoint.json"
#: The attribute of a worker's exception holding its traceback as text (it is pickled along).
TRACEBACK_ATTR = "adt_traceback"
#: The folder, in Ray's storage for the run, where each attempt leaves a marker.
ATTEMPTS_DIR = "adt-attempts"


def train_worker(config: dict[str, Any]) -> bytes | None:
    """Train one rank of the job in ``config``; rank 0 returns the result (weights included)
    as ``torch.save`` bytes: Ray refuses tensors in a return value."""
    import ray

    for entry in reversed(config["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # Ray Train logs each report and checkpoint at INFO on every rank (some through the root
    # logger): kept out of the terminal, as a worker of torch elastic keeps INFO of other
    # libraries (its root logger has no handler). Ours has its own handler.
    for name in ("", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    job = cloudpickle.loads(ray.get(config["job"]))
    env = dataclasses.replace(RankEnv.from_environ(), restart_count=attempt_number())
    configure_worker_logging(env.rank, job.log_level)
    try:
        out = run_rank(job, env, on_checkpoint=register_checkpoint)
    except Exception as err:  # the traceback does not survive the trip to the caller: as text
        setattr(err, TRACEBACK_ATTR, traceback.format_exc())
        raise
    if env.rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save((out.facts(), out.state_dict), buffer)
    return buffer.getvalue()


def attempt_number() -> int:
    """This attempt's number (0: the first). Ray does not count restarts for its workers
    (torch elastic sets ``TORCHELASTIC_RESTART_COUNT``): global rank 0 counts the markers
    earlier attempts left in the run's Ray storage, leaves its own, and tells the other ranks
    (collective: every rank; Ray's process group is up)."""
    import pyarrow.fs
    import ray.train

    context = ray.train.get_context()
    count = [0]
    if context.get_world_rank() == 0:
        storage = context.get_storage()
        fs, folder = storage.storage_filesystem, f"{storage.experiment_fs_path}/{ATTEMPTS_DIR}"
        fs.create_dir(folder, recursive=True)
        count[0] = len(fs.get_file_info(pyarrow.fs.FileSelector(folder)))
        with fs.open_output_stream(f"{folder}/{count[0]}"):
            pass
    dist.broadcast_object_list(count, src=0)
    return int(count[0])


def register_checkpoint(path: Path | None, step: int) -> None:
    """Register a checkpoint with Ray (every rank calls: ``ray.train.report`` is a barrier).
    Rank 0 reports a pointer (a small folder naming the file we wrote), so Ray lists it
    (``Result.checkpoint``, ``num_to_keep``) without a second copy of the weights."""
    import ray.train

    metrics = {"step": step}
    if path is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        pointer = {"checkpoint": str(path.resolve()), "step": step}
        (Path(tmp) / POINTER_FILE).write_text(json.dumps(pointer) + "\n")
        checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:08d}")
