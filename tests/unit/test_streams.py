"""Streams (IterableDataset) on one rank: one pass an epoch, max_steps, exact mid-epoch resume
with a state and without one; and the checks before launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ai_distributed_training import ConfigError
from ai_distributed_training.config import TrainingSettings
from ai_distributed_training.config.sections import sections_of
from ai_distributed_training.data import resolve_data
from ai_distributed_training.data.streams import StreamSource
from ai_distributed_training.prepare import prepare
from ai_distributed_training.training.checkpoint import list_checkpoints, load_checkpoint
from ai_distributed_training.training.context import RankContext, RankData
from ai_distributed_training.training.loop import train
from ai_distributed_training.training.resume import Checkpointer
from ai_distributed_training.training.strategies import DDPStrategy
from tests.stream_helpers import FEATURES, Endless, NoLen, Rows

IDS = list(range(100))
PRESET = "cpu-cluster-25g"


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def stream_data(dataset: Any) -> RankData:
    source = resolve_data(dataset)
    assert isinstance(source, StreamSource)
    reader = source.open()
    empty = torch.zeros(0, dtype=torch.long)
    return RankData(
        reader=reader, task="classification", train_idx=empty, val_reader=reader, val_idx=empty,
        stream=reader,
    )  # fmt: skip


def ctx(ckpt: Path | None = None, **settings: Any) -> RankContext:
    base = {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, **settings}
    return RankContext.of(
        sections_of(TrainingSettings(**base)),
        strategy=DDPStrategy(0, 1, torch.device("cpu")),
        checkpointer=Checkpointer(
            ckpt, writes=True, keep=20, config={}, every=base.get("checkpoint_every")
        ),
    )


def test_a_stream_is_one_pass_an_epoch() -> None:
    result = train(model(), stream_data(Rows(IDS)), ctx())
    assert result.steps == 2 * 7 and result.samples_seen == 2 * 100  # 16 x 6 + 4 per pass
    assert len(result.history) == 2


def test_an_endless_stream_trains_max_steps() -> None:
    result = train(model(), stream_data(Endless()), ctx(max_steps=9))
    assert result.steps == 9 and result.samples_seen == 9 * 16


@pytest.mark.parametrize("stateful", [True, False])
def test_mid_epoch_resume_of_a_stream_is_bitwise(tmp_path: Path, stateful: bool) -> None:
    """With a state: the stream continues where the checkpoint says. Without: it is read again
    and the epoch's trained global batches are skipped (exact: the stream is deterministic)."""
    full = model()
    train(full, stream_data(Rows(IDS, stateful)), ctx(tmp_path, checkpoint_every=3))
    mid = [p for p in list_checkpoints(tmp_path) if load_checkpoint(p)["loop"]["step_in_epoch"]]
    resumed = model()
    torch.manual_seed(999)
    checkpoint = load_checkpoint(mid[-1])  # the oldest kept: step 3, 48 samples in
    train(resumed, stream_data(Rows(IDS, stateful)), ctx(), checkpoint)
    assert checkpoint["ranks"][0].get("stream") == ({"position": 48} if stateful else None)
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_finite_stream_without_len_trains_by_epochs_until_it_ends() -> None:
    """As torch's DataLoader and Lightning do; it needed max_steps."""
    result = train(model(), stream_data(NoLen(IDS)), ctx())
    assert result.steps == 2 * 7 and result.samples_seen == 2 * 100 and len(result.history) == 2
    with_len = model()
    train(with_len, stream_data(Rows(IDS)), ctx())
    assert result.history[-1]["train_loss"] > 0


def test_stream_checks_before_launch() -> None:
    prepare(model(), NoLen(IDS), TrainingSettings(nodes=2))  # no max_steps needed
    for needs_total in ({"lr_schedule": "cosine"}, {"warmup_ratio": 0.1}):
        with pytest.raises(ConfigError, match=r"the stream NoLen has no len\(\).*pass max_steps"):
            prepare(model(), NoLen(IDS), TrainingSettings(nodes=2, **needs_total))
    prepare(model(), NoLen(IDS), TrainingSettings(nodes=2, lr_schedule="cosine", max_steps=5))
    with pytest.raises(ConfigError, match=r"num_workers=2: a stream is read in each training"):
        prepare(model(), DataLoader(Rows(IDS), batch_size=8, num_workers=2), TrainingSettings())
    with pytest.warns(
        UserWarning, match=r"no state_dict\(\)/load_state_dict\(\): after a restart"
    ) as got:
        prepared = prepare(model(), Rows(IDS, stateful=False), TrainingSettings(nodes=2))
    assert got[0].filename == __file__  # the user's line, however deep the library warned
    assert prepared.loop.validation_split == 0.0
    assert (
        "read whole by every rank, re-read and skipped on resume" in prepared.data.info.description
    )


def test_a_stream_that_splits_itself_by_worker_info_is_split_by_rank() -> None:
    """stream_sharding='worker_info': each rank is presented as loader worker <rank>."""
    from tests.stream_helpers import WorkerSplitRows, sample

    source = resolve_data(WorkerSplitRows(10))
    assert isinstance(source, StreamSource)
    assert "read whole by every rank" in source.info.description
    source = source.split_by("worker_info")
    assert "split by the stream itself" in source.info.description
    reader = source.open()
    reader.open_for(1, 2)
    reader.start()
    taken = reader.take(100)
    assert [float(x.sum()) for x, _ in taken] == [
        float(sample(i)[0].sum()) for i in (1, 3, 5, 7, 9)
    ]
    assert torch.utils.data.get_worker_info() is None  # only while reading
    with pytest.raises(
        ConfigError, match=r"stream_sharding='shard' but the stream WorkerSplitRows"
    ):
        source.split_by("shard")


def test_a_stream_of_pairs_fits_the_built_in_models_and_the_planner() -> None:
    """(inputs, label) samples: the MLP is sized from them; the planner counts max_steps
    global batches for a stream of unknown length."""
    from ai_distributed_training import DistributedTraining

    info = resolve_data(Endless()).info
    assert not info.structured and info.input_shape == (FEATURES,) and info.num_outputs == 2
    plan = DistributedTraining().plan(
        {"model_name": "m"}, Endless(), nodes=[2], hardware=PRESET, max_steps=50, batch_size=32
    )
    assert plan.train_samples == 50 * 32
