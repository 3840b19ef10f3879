"""Checkpoint files: corruption is caught by checksums, failed saves leave nothing behind."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ai_distributed_training.host import remove_stale_temporaries, write_atomically
from ai_distributed_training.training.checkpoint import (
    COMMIT_MARKER,
    FORMAT_KEY,
    FORMAT_VERSION,
    checkpoint_meta,
    checkpoint_path,
    commit_sharded,
    load_checkpoint,
    load_newest_valid,
    save_checkpoint,
)


def state(step: int) -> dict[str, object]:
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(64, 64), "n": torch.tensor(step)}, "loop": {"step": step}}


def flip_bytes_inside_a_tensor(path: Path, count: int = 8) -> None:
    """Change ``count`` bytes in the middle of the first tensor's storage, leaving the archive
    (its structure and the pickle) intact: what a bad disk sector or a bit flip does."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    with path.open("r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(start)
        data = bytearray(f.read(count))
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def test_a_checkpoint_with_changed_tensor_bytes_is_refused_and_the_previous_one_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, 1, state(1), keep=5)
    newest = save_checkpoint(tmp_path, 2, state(2), keep=5)
    flip_bytes_inside_a_tensor(newest)
    torch.load(newest, weights_only=True)  # torch itself does not notice
    with pytest.raises(ValueError, match=r"step-00000002\.pt: checksum mismatch"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        found = load_newest_valid(tmp_path)
    assert found is not None and found[0] == checkpoint_path(tmp_path, 1)
    assert torch.equal(found[1]["model"]["w"], state(1)["model"]["w"])  # type: ignore[index]
    assert "step-00000002.pt" in caplog.text and "checksum mismatch" in caplog.text


def test_a_sharded_checkpoint_with_a_corrupt_shard_is_refused(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 3, sharded=True)
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(os.urandom(4096))
    (path / "__1_0.distcp").write_bytes(os.urandom(4096))
    commit_sharded(path, {"loop": {"step": 3}, "ranks": []}, keep=3)
    assert (path / COMMIT_MARKER).is_file()
    assert load_checkpoint(path)["dcp_dir"] == str(path)
    with (path / "__1_0.distcp").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match=r"step-00000003\.dcp/__1_0\.distcp: checksum mismatch"):
        load_checkpoint(path)


def test_checkpoints_of_the_first_format_load_in_todays(tmp_path: Path) -> None:
    """Checkpoints written before checksums, format numbers, strategies, run ids and
    fingerprints resume: one function fills in what they lack, as today's format says."""
    path = checkpoint_path(tmp_path, 4)
    torch.save(state(4), path)
    loaded = load_checkpoint(path)
    assert loaded["loop"] == {"step": 4, "samples": None}  # the loop counts them again
    assert loaded[FORMAT_KEY] == FORMAT_VERSION == 2
    assert (loaded["strategy"], loaded["run_id"], loaded["fingerprint"]) == ("ddp", None, {})
    assert checkpoint_meta(path)["strategy"] == "ddp"


def test_a_checkpoint_of_a_newer_format_is_refused_by_name(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 4)
    torch.save({**state(4), FORMAT_KEY: FORMAT_VERSION + 1}, path)
    with pytest.raises(ValueError, match=r"checkpoint format 3 is newer than this version's 2"):
        load_checkpoint(path)


def test_todays_checkpoints_carry_their_format(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 4, state(4), keep=2)
    assert torch.load(path, weights_only=True)[FORMAT_KEY] == FORMAT_VERSION


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB filesystem (tmpfs), mounted for the test and unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_save_on_a_full_disk_names_the_space_and_leaves_no_temporary_file(
    small_disk: Path,
) -> None:
    with pytest.raises(OSError, match=r"no space left on .*disk \(needed ~4\.2 MB") as info:
        write_atomically({"w": torch.zeros(1024, 1024)}, small_disk / "step-00000001.pt")
    assert info.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []


def test_temporary_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".step-00000001.pt.tmp-{dead.stdout.strip()}"
    live = tmp_path / f".step-00000002.pt.tmp-{os.getpid()}"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_staging_data_into_a_full_temporary_directory_names_it(small_disk: Path) -> None:
    """The workers' data is staged in TMPDIR; a full one used to read as torch's internals
    (``unexpected pos N vs M``) with no path."""
    from ai_distributed_training.data import resolve_data

    source = resolve_data((torch.zeros(2048, 256), torch.zeros(2048, dtype=torch.long)))
    with pytest.raises(OSError, match=r"no space left on .*disk.* \(needed ~2\.1 MB"):
        source.stage(small_disk)  # type: ignore[attr-defined]
    assert list(small_disk.iterdir()) == []


def test_digests_cover_zero_dim_tensors_and_bfloat16() -> None:
    """A 0-dim tensor (BatchNorm's num_batches_tracked, a scalar parameter) used to break the
    weight digest (``.view(torch.uint8)`` on 0 dims), losing a finished job's result."""
    from ai_distributed_training.training.strategies.base import state_digest

    base = {"t": torch.tensor(3), "w": torch.ones(2, dtype=torch.bfloat16)}
    assert state_digest(base) == state_digest({k: v.clone() for k, v in base.items()})
    assert state_digest(base) != state_digest({**base, "t": torch.tensor(4)})
    assert state_digest(base) != state_digest({**base, "w": torch.zeros(2, dtype=torch.bfloat16)})
