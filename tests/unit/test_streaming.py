"""Tables on disk (.npy files, .npy/.parquet shard directories): same batches as in memory,
validated in bounded passes, and a reader whose resident memory stays bounded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_distributed_training.data import resolve_data, streaming
from ai_distributed_training.errors import ConfigError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SPLITS = [(0, 300), (300, 300), (300, 1000)]  # an empty shard in the middle


def _table(n: int = 1000, labels: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, n) if labels else rng.normal(size=n)
    return np.column_stack([rng.normal(size=(n, 5)), target])


def _write(table: np.ndarray, tmp_path: Path, layout: str) -> Path:
    if layout == "npy file":
        np.save(tmp_path / "t.npy", table)
        return tmp_path / "t.npy"
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate(SPLITS):
        part = table[a:b]
        if layout == "npy shards":
            np.save(shards / f"part-{i:03d}.npy", part)
        else:
            columns = {f"c{j}": part[:, j] for j in range(part.shape[1])}
            pq.write_table(pa.table(columns), shards / f"part-{i:03d}.parquet", row_group_size=128)
    return shards


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "cache_root", lambda: tmp_path / "cache")


@pytest.mark.parametrize("layout", ["npy file", "npy shards", "parquet shards"])
@pytest.mark.parametrize("labels", [True, False])
def test_batches_equal_the_same_table_in_memory(tmp_path: Path, layout: str, labels: bool) -> None:
    table = _table(labels=labels)
    on_disk = resolve_data(_write(table, tmp_path, layout))
    target = table[:, -1].astype(np.int64) if labels else table[:, -1]
    in_memory = resolve_data((table[:, :-1], target))
    assert on_disk.info.samples == 1000 and on_disk.info.task == in_memory.info.task
    assert on_disk.info.num_outputs == in_memory.info.num_outputs
    disk, memory = on_disk.open(), in_memory.open()
    indices = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    for chunk in (indices[:7], indices[7:600], indices[600:], indices[:0]):
        x, y = disk.batch(chunk)
        xm, ym = memory.batch(chunk)
        assert x.dtype == xm.dtype and y.dtype == ym.dtype
        assert torch.equal(x, xm) and torch.equal(y, ym)


def test_task_setting_applies_to_files(tmp_path: Path) -> None:
    path = _write(_table(), tmp_path, "npy file")
    assert resolve_data(path, task="regression").info.task == "regression"
    (tmp_path / "f").mkdir()
    with pytest.raises(ConfigError, match="needs integer class labels"):
        resolve_data(_write(_table(labels=False), tmp_path / "f", "npy shards"), "classification")


def test_nan_is_reported_with_its_file_and_row(tmp_path: Path) -> None:
    table = _table()
    table[457, 2] = np.nan  # row 157 of the third shard
    with pytest.raises(ConfigError, match=r"part-002\.npy contains NaN or inf.*\[157\]"):
        resolve_data(_write(table, tmp_path, "npy shards"))


def test_bad_directories_and_tables_are_named(tmp_path: Path) -> None:
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", _table())
    (tmp_path / "mixed" / "b.csv").write_text("1,2\n")
    with pytest.raises(ConfigError, match=r"one kind, \.npy or \.parquet; found suffixes "):
        resolve_data(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="found suffixes none"):
        resolve_data(tmp_path / "empty")
    (tmp_path / "widths").mkdir()
    np.save(tmp_path / "widths" / "a.npy", _table())
    np.save(tmp_path / "widths" / "b.npy", _table()[:, 1:])
    with pytest.raises(ConfigError, match="different numbers of columns"):
        resolve_data(tmp_path / "widths")
    np.save(tmp_path / "f.npy", np.asfortranarray(_table()))
    with pytest.raises(ConfigError, match="C order"):
        resolve_data(tmp_path / "f.npy")
    np.save(tmp_path / "cut.npy", _table())
    with open(tmp_path / "cut.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ConfigError, match=r"cut\.npy is shorter than its header says"):
        resolve_data(tmp_path / "cut.npy")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(ConfigError, match=r"2-D table.*\(5,\)"):
        resolve_data(tmp_path / "flat.npy")


def test_parquet_columns_must_be_numeric_and_complete(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    pq.write_table(pa.table({"a": ["x", "y"], "t": [0, 1]}), tmp_path / "s" / "p.parquet")
    with pytest.raises(ConfigError, match=r"column 'a' has type string"):
        resolve_data(tmp_path / "s")
    (tmp_path / "n").mkdir()
    pq.write_table(pa.table({"a": [1.0, None], "t": [0, 1]}), tmp_path / "n" / "p.parquet")
    with pytest.raises(ConfigError, match=r"column 'a' has 1 missing values"):
        resolve_data(tmp_path / "n")


def test_parquet_is_decoded_once_and_again_when_it_changes(tmp_path: Path) -> None:
    shards = _write(_table(), tmp_path, "parquet shards")
    first = resolve_data(shards).paths  # type: ignore[attr-defined]
    stamps = [os.stat(p).st_mtime_ns for p in first]
    assert resolve_data(shards).paths == first  # type: ignore[attr-defined]
    assert [os.stat(p).st_mtime_ns for p in first] == stamps  # reused, not rewritten
    columns = {f"c{j}": [1.0, 2.0] for j in range(6)}
    pq.write_table(pa.table(columns), shards / "part-000.parquet")
    changed = resolve_data(shards)
    assert changed.paths[0] != first[0] and changed.info.samples == 702  # type: ignore[attr-defined]


def _resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_every_row_keeps_resident_memory_at_a_batch(tmp_path: Path) -> None:
    """Every row of a 64 MiB table, read in random batches, costs ~a batch of memory."""
    rows = 64 * 1024  # 64 Ki rows x 128 float64 columns = 64 MiB
    table = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float64, (rows, 128))
    table[:, -1] = np.arange(rows) % 2
    table.flush()
    del table
    reader = resolve_data(tmp_path / "big.npy").open()
    reader.batch(torch.arange(4096))  # allocator warm-up
    before = peak = _resident_bytes()
    for chunk in torch.randperm(rows).split(4096):  # 4 MiB per batch
        reader.batch(chunk)
        peak = max(peak, _resident_bytes())
    assert peak - before < 16 << 20, f"resident memory grew by {(peak - before) >> 20} MiB"
