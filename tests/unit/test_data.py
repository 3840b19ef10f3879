"""Data inputs: formats, task inference, synthetic data that is actually learnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from ai_distributed_training.config import SyntheticDataSpec
from ai_distributed_training.data import make_synthetic, resolve_data
from ai_distributed_training.errors import ConfigError


def _table(n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([rng.normal(size=(n, 3)), rng.integers(0, 3, n)])


def test_npz_with_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((10, 4)), y=np.arange(10) % 2)
    info = resolve_data(str(path)).info
    assert (info.samples, info.input_shape, info.task, info.num_outputs) == (
        10,
        (4,),
        "classification",
        2,
    )


def test_npz_without_the_named_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(ValueError, match=r"'X' and 'y'; found \['a'\]"):
        resolve_data(path)


def test_pt_tuple_and_dict(tmp_path: Path) -> None:
    torch.save((torch.randn(8, 2), torch.randn(8)), tmp_path / "t.pt")
    torch.save({"X": torch.randn(8, 2), "y": torch.randn(8, 3)}, tmp_path / "d.pt")
    assert resolve_data(tmp_path / "t.pt").info.task == "regression"
    assert resolve_data(tmp_path / "d.pt").info.num_outputs == 3


def test_npy_and_csv_tables_use_the_last_column_as_target(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _table())
    header = "a,b,c,label"
    np.savetxt(tmp_path / "t.csv", _table(), delimiter=",", header=header, comments="")
    for name in ("t.npy", "t.csv"):
        info = resolve_data(tmp_path / name).info
        assert (info.samples, info.input_shape, info.task, info.num_outputs) == (
            40,
            (3,),
            "classification",
            3,
        )


def test_float_targets_mean_regression() -> None:
    info = resolve_data((np.zeros((5, 2)), np.linspace(0, 1, 5))).info
    assert info.task == "regression" and info.num_outputs == 1


def test_dataset_input_infers_shape_and_classes() -> None:
    ds = TensorDataset(torch.randn(12, 2, 3), torch.arange(12) % 4)
    info = resolve_data(ds).info
    assert info.input_shape == (2, 3) and info.num_outputs == 4


def test_synthetic_data_is_deterministic_and_balanced_enough() -> None:
    spec = SyntheticDataSpec(samples=5000, features=16, classes=3, seed=1)
    x1, y1 = make_synthetic(spec)
    x2, y2 = make_synthetic(spec)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    counts = torch.bincount(y1, minlength=3).float() / len(y1)
    assert counts.min() > 0.1  # every class present in earnest


def test_synthetic_labels_are_learnable() -> None:
    """A model of the teacher's shape fits the labels far beyond chance (loss falls)."""
    spec = SyntheticDataSpec(samples=4000, features=16, seed=2)
    x, y = make_synthetic(spec)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_a_csv_target_column_can_be_chosen_by_name_or_index(tmp_path: Path) -> None:
    """A table whose target is its FIRST column used to train on the last one without a word."""
    path = tmp_path / "houses.csv"
    path.write_text("price,rooms,area\n" + "\n".join(f"{i % 3},{i},{2 * i}" for i in range(30)))
    for target in ("price", 0, -3):
        source = resolve_data(str(path), target=target)
        x, y = source.open().batch(torch.arange(30))
        assert torch.equal(y, torch.arange(30) % 3) and x.shape == (30, 2)
        assert torch.equal(x[:, 0], torch.arange(30, dtype=x.dtype))
        assert "target: column 0 'price'" in source.info.description
    with pytest.raises(ConfigError, match=r"which column of houses.csv is the target\? Its co"):
        resolve_data(str(path))  # no column named like a target: no guess


@pytest.mark.parametrize("header", ["label,rooms,area", "Rooms,Class,area", "rooms,area,y"])
def test_a_csv_target_named_like_one_is_found_wherever_it_stands(
    tmp_path: Path, header: str
) -> None:
    """A table whose target was its FIRST column trained on its last one without a word."""
    path = tmp_path / "houses.csv"
    column = [name.lower() for name in header.split(",")].index(
        next(n for n in header.lower().split(",") if n in ("label", "class", "y"))
    )
    rows = [[float(i), float(2 * i), float(3 * i)] for i in range(30)]
    for i, row in enumerate(rows):
        row[column] = float(i % 3)
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows))
    source = resolve_data(str(path))
    x, y = source.open().batch(torch.arange(30))
    assert torch.equal(y, torch.arange(30) % 3) and x.shape == (30, 2)
    assert source.info.task == "classification"


def test_a_csv_with_two_target_like_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("y,a,label\n1,2,0\n0,5,1\n")
    with pytest.raises(ConfigError, match=r"several are named like a target \('y', 'label'\)"):
        resolve_data(str(path))


@pytest.mark.parametrize(
    ("target", "data", "match"),
    [
        ("cost", "houses.csv", r"'cost' is not a column of houses.csv: its columns are \['price'"),
        (3, "houses.csv", r"target=3 is out of range for houses.csv's 3 columns"),
        (0, "arrays.npz", r"target=0 applies to .csv tables; arrays.npz has its target in the"),
    ],
)
def test_a_bad_target_is_named(tmp_path: Path, target: object, data: str, match: str) -> None:
    (tmp_path / "houses.csv").write_text("price,rooms,area\n1,2,3\n0,5,6\n")
    np.savez(tmp_path / "arrays.npz", X=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(ConfigError, match=match):
        resolve_data(str(tmp_path / data), target=target)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"target=.* chooses the target column of a .csv"):
        resolve_data((np.zeros((4, 2)), np.zeros(4)), target=target)  # type: ignore[arg-type]


class _CountingDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Labels 0..9; counts the items read."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return torch.zeros(3), torch.tensor(i % 10)


def test_a_dataset_without_targets_is_not_read_whole_to_count_its_classes() -> None:
    """5000 items at 2 ms each used to cost 10.8 s in the caller before any worker started."""
    dataset = _CountingDataset(5000)
    source = resolve_data(dataset)
    assert source.info.num_outputs == 10 and dataset.reads <= 2 + 256  # 2: the example batch
    assert "10 classes (from 256 of its labels; set num_classes" in source.info.description
    stated = resolve_data(_CountingDataset(5000), num_classes=12)
    assert stated.info.num_outputs == 12 and "12 classes (num_classes)" in stated.info.description


def test_integer_inputs_stay_integers_and_float64_becomes_float32() -> None:
    """Integer X used to be cast to float (an embedding model then failed in the workers)."""
    ids = torch.randint(0, 50, (20, 3))
    source = resolve_data((ids, torch.zeros(20, dtype=torch.long)))
    x, _ = source.open().batch(torch.arange(4))
    assert x.dtype == torch.int64 and torch.equal(x, ids[:4])
    assert source.info.input_dtype == "int64"
    wide = resolve_data(TensorDataset(torch.randn(8, 3, dtype=torch.float64), torch.zeros(8)))
    x, _ = wide.open().batch(torch.arange(8))
    assert x.dtype == torch.float32 and wide.info.input_dtype == "float32"


def test_the_built_in_mlp_takes_integer_features() -> None:
    from ai_distributed_training.models import resolve_model

    source = resolve_data((torch.randint(0, 5, (10, 4)), torch.zeros(10, dtype=torch.long)))
    model = resolve_model({"model_name": "m"}).build(source.info)
    x, _ = source.open().batch(torch.arange(10))
    assert model(x).shape == (10, 2)


def test_a_tensordataset_is_sliced_like_tensors_with_the_batches_its_loader_would_make() -> None:
    """A DataLoader over a TensorDataset of (X, y) reads as sliced tensors (not sample by
    sample): its batches are exactly default_collate's, its batch_size and drop_last kept."""
    from torch.utils.data import DataLoader, default_collate

    from ai_distributed_training.data.tensors import DatasetSource, TensorSource

    x, y = torch.randn(10, 2, 3), torch.arange(10) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4, num_workers=2, drop_last=True)
    source = resolve_data(loader)
    assert isinstance(source, TensorSource)
    assert source.loader_batch_size == 4 and source.loader_drop_last
    assert "TensorDataset, sliced (num_workers=2 unused)" in source.info.description
    indices = torch.tensor([7, 2, 5])
    expected = default_collate([loader.dataset[int(i)] for i in indices])
    assert all(
        torch.equal(a, b) for a, b in zip(source.open().batch(indices), expected, strict=True)
    )
    # A collate_fn of its own, or a class count to state: read sample by sample as before.
    own = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda b: default_collate(b))
    assert isinstance(resolve_data(own), DatasetSource)
    assert isinstance(resolve_data(TensorDataset(x, y), num_classes=5), DatasetSource)
