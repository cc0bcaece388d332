"""Tests for the dataset registry ``data/``.

File-based datasets (MNIST, Fashion-MNIST, CIFAR-10) are tested with tiny files written here, so
the suite runs offline and fast; their contents are compared exactly with what was written.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import data

TOY = ["spiral", "circles", "xor", "gauss", "moons"]
TABULAR = {"iris": (4, 3, 150), "wine": (13, 3, 178), "breast-cancer": (30, 2, 569)}
IDX_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def assert_one_sentence(message: str) -> None:
    """Error messages are shown verbatim in the UI: one line, one sentence, ending in a period."""
    assert "\n" not in message
    assert message.endswith(".")
    assert re.search(r"[.!?]\s+[A-Z]", message) is None, message


def error_message(excinfo: pytest.ExceptionInfo[data.DataError]) -> str:
    message = str(excinfo.value)
    assert_one_sentence(message)
    return message


def assert_same(a: data.Dataset, b: data.Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def check_contract(ds: data.Dataset) -> None:
    """Shapes, dtypes and label range every Dataset promises."""
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert tuple(ds.x_train.shape) == (ds.num_train, *ds.input_shape)
    assert tuple(ds.x_test.shape) == (ds.num_test, *ds.input_shape)
    assert ds.y_train.shape == (ds.num_train,) and ds.y_test.shape == (ds.num_test,)
    assert ds.num_train > 0 and ds.num_test > 0
    for y in (ds.y_train, ds.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert "\n" not in ds.description and ds.description


# --- registry ---------------------------------------------------------------------------------


def test_names_sorted_and_complete() -> None:
    names = data.names()
    assert names == sorted(names)
    expected = set(TOY) | set(TABULAR) | {"digits", "mnist", "fashion-mnist", "cifar10"}
    assert set(names) == expected


@pytest.mark.parametrize("name", sorted(data.names()))
def test_describe_is_one_line(name: str) -> None:
    text = data.describe(name)
    assert text and "\n" not in text


@pytest.mark.parametrize("name", sorted(set(TOY) | set(TABULAR) | {"digits"}))
def test_info_is_what_loading_gives(name: str) -> None:
    """``data.info`` is the one place shapes live (jobs size runs with it): it must agree with
    the data itself."""
    ds = data.load(name, subset=20)
    info = data.info(name)
    assert (info.input_shape, info.num_classes) == (ds.input_shape, ds.num_classes)
    assert info.images == (name == "digits") and not info.on_disk


def test_info_of_folder_datasets_needs_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCA_DATA_DIR", raising=False)
    assert data.info("MNIST").input_shape == (1, 28, 28)
    assert data.info("cifar-10") == data.DatasetInfo((3, 32, 32), 10, images=True, on_disk=True)
    assert data.info("fashion_mnist").on_disk
    with pytest.raises(data.DataError):
        data.info("imagenet")
    # Image shapes of a flattened input: the registered one, else a square of 1 or 3 channels.
    assert data.image_shape("mnist", 784) == (1, 28, 28)
    assert data.image_shape("mnist", 3 * 20 * 20) == (3, 20, 20)
    assert data.image_shape("iris", 4) is None
    assert data.image_shape("imagenet", 784) is None


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load("imagenet")
    message = error_message(excinfo)
    assert "imagenet" in message
    for name in data.names():
        assert name in message
    with pytest.raises(data.DataError):
        data.describe("imagenet")


def test_name_spelling_is_forgiving() -> None:
    assert data.load("Breast_Cancer").name == "breast-cancer"
    assert data.describe("CIFAR-10") == data.describe("cifar10")
    assert data.describe("fashion_mnist") == data.describe("fashion-mnist")


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load("spiral", nosie=0.2)
    message = error_message(excinfo)
    assert "nosie" in message
    for option in ("noise", "train_fraction", "n"):
        assert option in message
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", noise=0.1, data_dir="/nonexistent")
    assert "no options" in error_message(excinfo)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("spiral", {"noise": -0.1}),
        ("spiral", {"noise": float("nan")}),
        ("spiral", {"noise": "0.1"}),
        ("xor", {"train_fraction": 0.0}),
        ("xor", {"train_fraction": 1.0}),
        ("xor", {"train_fraction": 1.5}),
        ("gauss", {"n": 1}),
        ("gauss", {"n": 10.5}),
        ("gauss", {"n": True}),
        ("iris", {"test_fraction": 1.0}),
        ("iris", {"test_fraction": -0.2}),
        ("iris", {"subset": 0}),
        ("iris", {"subset": -5}),
        ("iris", {"subset": 2.5}),
        ("iris", {"seed": -1}),
        ("iris", {"seed": 1.5}),
    ],
)
def test_bad_option_values(name: str, options: dict[str, object]) -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load(name, **options)  # type: ignore[arg-type]
    error_message(excinfo)


def test_default_options() -> None:
    assert data.default_options("spiral") == {"noise": 0.05, "train_fraction": 0.5, "n": 1000}
    assert data.default_options("iris") == {"test_fraction": 0.2}
    assert data.default_options("mnist") == {}


def test_dataset_repr_and_validation() -> None:
    ds = data.load("xor", n=20)
    assert (ds.num_train, ds.num_test) == (10, 10)
    assert repr(ds).startswith("Dataset(name='xor', num_train=10, num_test=10")
    with pytest.raises(data.DataError):
        data.Dataset("bad", ds.x_train.double(), ds.y_train, ds.x_test, ds.y_test, (2,), 2, "bad")
    assert issubclass(data.DataError, ValueError)


# --- toy sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY)
def test_toy_contract_and_determinism(name: str) -> None:
    ds = data.load(name)
    check_contract(ds)
    assert ds.input_shape == (2,) and ds.num_classes == 2
    assert ds.num_train + ds.num_test == 1000 and ds.num_train == 500
    assert set(ds.y_train.tolist()) == {0, 1}
    assert_same(ds, data.load(name, seed=0))
    other = data.load(name, seed=1)
    assert not torch.equal(ds.x_train, other.x_train)


@pytest.mark.parametrize("name", TOY)
def test_toy_noise_free_shapes_lie_in_unit_square(name: str) -> None:
    ds = data.load(name, noise=0.0, n=2000)
    assert float(ds.x_train.abs().max()) <= 1.0 + 1e-6
    assert float(ds.x_test.abs().max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("name", TOY)
def test_toy_noise_is_gaussian_jitter_of_given_std(name: str) -> None:
    clean = data.load(name, noise=0.0, n=4000, seed=5)
    noisy = data.load(name, noise=0.2, n=4000, seed=5)
    # Same seed: same underlying points and split, only the jitter differs.
    assert torch.equal(clean.y_train, noisy.y_train)
    jitter = noisy.x_train - clean.x_train
    assert abs(float(jitter.std()) - 0.2) < 0.01
    assert abs(float(jitter.mean())) < 0.01


@pytest.mark.parametrize(("fraction", "n", "n_train"), [(0.25, 200, 50), (0.8, 101, 81)])
def test_toy_train_fraction_and_n(fraction: float, n: int, n_train: int) -> None:
    ds = data.load("circles", train_fraction=fraction, n=n)
    assert (ds.num_train, ds.num_test) == (n_train, n - n_train)


def test_toy_classes_are_balanced_where_the_shape_allows() -> None:
    ds = data.load("spiral", n=400, train_fraction=0.5)
    y = torch.cat([ds.y_train, ds.y_test])
    assert torch.bincount(y).tolist() == [200, 200]


# --- scikit-learn sets ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TABULAR))
def test_tabular_standardized_on_train(name: str) -> None:
    width, classes, total = TABULAR[name]
    ds = data.load(name)
    check_contract(ds)
    assert ds.input_shape == (width,) and ds.num_classes == classes
    assert ds.num_train + ds.num_test == total
    assert abs(ds.num_test - round(0.2 * total)) <= classes
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(width), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(width), atol=1e-4)
    # Test statistics are not forced to 0/1: they come from the train split.
    assert not torch.allclose(ds.x_test.mean(0), torch.zeros(width), atol=1e-5)
    assert set(ds.y_test.tolist()) == set(range(classes))  # stratified
    assert_same(ds, data.load(name))
    assert not torch.equal(ds.y_train, data.load(name, seed=1).y_train)


def test_sklearn_test_fraction() -> None:
    ds = data.load("iris", test_fraction=0.5)
    assert (ds.num_train, ds.num_test) == (75, 75)
    assert torch.bincount(ds.y_test).tolist() == [25, 25, 25]


def test_digits_images() -> None:
    ds = data.load("digits")
    check_contract(ds)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.num_train + ds.num_test == 1797
    x = torch.cat([ds.x_train, ds.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Values are the original 0..16 levels divided by 16.
    assert torch.equal(x * 16, torch.round(x * 16))


# --- subset -----------------------------------------------------------------------------------


def test_subset_is_seeded_and_sized() -> None:
    a = data.load("digits", subset=100, seed=3)
    check_contract(a)
    assert (a.num_train, a.num_test) == (100, 25)
    assert_same(a, data.load("digits", subset=100, seed=3))
    assert not torch.equal(a.x_train, data.load("digits", subset=100, seed=4).x_train)
    # The subset is drawn from the same split the full load gives.
    full = data.load("digits", seed=3)
    rows = {tuple(row.flatten().tolist()) for row in full.x_train}
    assert all(tuple(row.flatten().tolist()) in rows for row in a.x_train)


def test_subset_edge_cases() -> None:
    small = data.load("xor", subset=2, n=100)
    assert (small.num_train, small.num_test) == (2, 1)
    everything = data.load("xor", subset=10_000, n=100)
    assert (everything.num_train, everything.num_test) == (50, 50)


# --- MNIST / Fashion-MNIST (IDX) --------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(
    folder: Path, *, gz: bool, seed: int = 0, rows: int = 28, cols: int = 28
) -> dict[str, np.ndarray]:
    """Write 5 train + 3 test random images and labels; return what was written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (5, rows, cols), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, 5, dtype=np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (3, rows, cols), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, 3, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / stem).write_bytes(idx_bytes(array))
    return arrays


def check_idx_dataset(ds: data.Dataset, arrays: dict[str, np.ndarray]) -> None:
    check_contract(ds)
    rows, cols = arrays[IDX_FILES[0]].shape[1:]
    assert ds.input_shape == (1, rows, cols) and ds.num_classes == 10
    expected_train = torch.from_numpy(arrays[IDX_FILES[0]]).float().unsqueeze(1) / 255
    expected_test = torch.from_numpy(arrays[IDX_FILES[2]]).float().unsqueeze(1) / 255
    assert torch.equal(ds.x_train, expected_train)
    assert torch.equal(ds.x_test, expected_test)
    assert torch.equal(ds.y_train, torch.from_numpy(arrays[IDX_FILES[1]]).long())
    assert torch.equal(ds.y_test, torch.from_numpy(arrays[IDX_FILES[3]]).long())


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("mnist", "."),
        ("mnist", "MNIST/raw"),
        ("mnist", "mnist"),
        ("fashion-mnist", "."),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("fashion-mnist", "fashion-mnist"),
        ("fashion-mnist", "fashion_mnist"),
    ],
)
def test_idx_layouts_read_exactly(tmp_path: Path, name: str, layout: str, gz: bool) -> None:
    arrays = write_idx_set(tmp_path / layout, gz=gz)
    ds = data.load(name, data_dir=tmp_path)
    assert ds.name == name
    check_idx_dataset(ds, arrays)
    assert_same(ds, data.load(name, data_dir=str(tmp_path)))


def test_idx_dims_come_from_the_file(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=False, rows=6, cols=4)
    check_idx_dataset(data.load("mnist", data_dir=tmp_path), arrays)


def test_idx_mixed_plain_and_gz_files(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=True)
    stem = IDX_FILES[1]
    (tmp_path / f"{stem}.gz").unlink()
    (tmp_path / stem).write_bytes(idx_bytes(arrays[stem]))
    check_idx_dataset(data.load("mnist", data_dir=tmp_path), arrays)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    monkeypatch.setenv("LCA_DATA_DIR", str(tmp_path))
    check_idx_dataset(data.load("mnist"), arrays)


def test_idx_subset(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=False)
    ds = data.load("mnist", data_dir=tmp_path, subset=3, seed=1)
    assert (ds.num_train, ds.num_test) == (3, 1)
    assert_same(ds, data.load("mnist", data_dir=tmp_path, subset=3, seed=1))
    written = torch.from_numpy(arrays[IDX_FILES[0]]).float().unsqueeze(1) / 255
    assert all(any(torch.equal(x, w) for w in written) for x in ds.x_train)


@pytest.fixture
def no_standard_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No dataset in any standard place, whatever this machine has installed: the system folder
    and the working directory point into an empty ``tmp_path/machine``; returns that folder."""
    machine = tmp_path / "machine"
    (machine / "share").mkdir(parents=True)
    monkeypatch.delenv("LCA_DATA_DIR", raising=False)
    monkeypatch.setattr(data.folders, "SYSTEM_DIR", machine / "share")
    monkeypatch.chdir(machine)
    return machine


def test_no_data_dir_at_all(no_standard_data: Path) -> None:
    for name, expected in (("mnist", IDX_FILES[0]), ("cifar10", "data_batch_1")):
        with pytest.raises(data.DataError) as excinfo:
            data.load(name)
        message = error_message(excinfo)
        assert expected in message and "LCA_DATA_DIR" in message


def test_fashion_mnist_missing_everywhere_names_places_and_package(no_standard_data: Path) -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load("fashion-mnist")
    message = error_message(excinfo)
    assert all(stem in message for stem in IDX_FILES)
    assert str(no_standard_data / "share" / "fashion-mnist") in message
    assert str(Path("data", "fashion-mnist")) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "LCA_DATA_DIR" in message
    assert data.locate("fashion-mnist") is None


def test_standard_places_are_searched_in_order(
    no_standard_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$LCA_DATA_DIR, then the system folder, then ./data/<name>; the first complete one wins."""
    local = write_idx_set(no_standard_data / "data" / "fashion-mnist", gz=True, seed=1)
    check_idx_dataset(data.load("fashion-mnist"), local)
    assert data.locate("fashion-mnist") == Path("data", "fashion-mnist")
    system = write_idx_set(no_standard_data / "share" / "fashion-mnist", gz=True, seed=2)
    check_idx_dataset(data.load("fashion-mnist"), system)
    assert data.locate("fashion-mnist") == no_standard_data / "share" / "fashion-mnist"
    env = write_idx_set(no_standard_data / "mine" / "FashionMNIST" / "raw", gz=False, seed=3)
    monkeypatch.setenv("LCA_DATA_DIR", str(no_standard_data / "mine"))
    check_idx_dataset(data.load("fashion-mnist"), env)
    given = write_idx_set(no_standard_data / "given", gz=False, seed=4)
    check_idx_dataset(data.load("fashion-mnist", data_dir=no_standard_data / "given"), given)
    # The system folder holds only Fashion-MNIST: MNIST is not confused with it.
    monkeypatch.delenv("LCA_DATA_DIR")
    with pytest.raises(data.DataError):
        data.load("mnist")


def test_a_given_folder_is_never_replaced_by_a_standard_place(no_standard_data: Path) -> None:
    write_idx_set(no_standard_data / "share" / "fashion-mnist", gz=True)
    (no_standard_data / "empty").mkdir()
    with pytest.raises(data.DataError) as excinfo:
        data.load("fashion-mnist", data_dir=no_standard_data / "empty")
    assert str(no_standard_data / "empty") in error_message(excinfo)
    assert data.locate("fashion-mnist", no_standard_data / "empty") is None


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_missing_folder(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError) as excinfo:
        data.load(name, data_dir=missing)
    message = error_message(excinfo)
    assert str(missing) in message
    assert all(stem in message for stem in IDX_FILES)


def test_idx_empty_folder_names_places_looked(tmp_path: Path) -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    message = error_message(excinfo)
    assert all(stem in message for stem in IDX_FILES)
    assert str(tmp_path) in message and "MNIST/raw" in message
    assert "--data-dir" in message and "LCA_DATA_DIR" in message


def test_idx_incomplete_folder_names_missing_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_FILES[3]).unlink()
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert IDX_FILES[3] in error_message(excinfo)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_wrong_magic(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path, gz=gz)
    # Swap the train images and labels files: each now has the other's magic number.
    stem = IDX_FILES[0]
    bad = idx_bytes(arrays[IDX_FILES[1]])
    path = tmp_path / (stem + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    message = error_message(excinfo)
    assert stem in message and "0x00000803" in message


@pytest.mark.parametrize("cut", [2, 10, 100], ids=["in-magic", "in-header", "in-data"])
def test_idx_truncated_file(tmp_path: Path, cut: int) -> None:
    arrays = write_idx_set(tmp_path, gz=False)
    stem = IDX_FILES[2]
    (tmp_path / stem).write_bytes(idx_bytes(arrays[stem])[:cut])
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert stem in error_message(excinfo)


def test_idx_file_longer_than_header_says(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=False)
    stem = IDX_FILES[3]
    (tmp_path / stem).write_bytes(idx_bytes(arrays[stem]) + b"\x00")
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert stem in error_message(excinfo)


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / f"{IDX_FILES[0]}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert IDX_FILES[0] in error_message(excinfo)


def test_idx_mismatched_counts(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_FILES[1]).write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    message = error_message(excinfo)
    assert "5 images" in message and "4 labels" in message


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_FILES[3]).write_bytes(idx_bytes(np.array([1, 2, 10], dtype=np.uint8)))
    with pytest.raises(data.DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert IDX_FILES[3] in error_message(excinfo)


# --- CIFAR-10 ---------------------------------------------------------------------------------


def write_cifar(folder: Path, *, protocol: int = pickle.DEFAULT_PROTOCOL, seed: int = 0) -> dict:
    """Write the six batches (2 images each, 3 in the test batch); return what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR_FILES:
        count = 3 if name == "test_batch" else 2
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, count)],
            b"filenames": [f"img{i}.png".encode() for i in range(count)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = batch
    return written


def check_cifar(ds: data.Dataset, written: dict) -> None:
    check_contract(ds)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    x_train = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    y_train = sum((b[b"labels"] for b in train), [])
    x_test = written["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(x_train).float() / 255)
    assert torch.equal(ds.y_train, torch.tensor(y_train, dtype=torch.int64))
    assert torch.equal(ds.x_test, torch.from_numpy(x_test).float() / 255)
    assert torch.equal(ds.y_test, torch.tensor(written["test_batch"][b"labels"]))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("inner", [True, False], ids=["cifar-10-batches-py", "direct"])
def test_cifar_reads_exactly(tmp_path: Path, protocol: int, inner: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if inner else tmp_path
    written = write_cifar(folder, protocol=protocol)
    check_cifar(data.load("cifar10", data_dir=tmp_path), written)


def test_cifar_numpy1_module_names(tmp_path: Path) -> None:
    """Pickles written by numpy 1.x (like the official files) name ``numpy.core.multiarray``."""
    written = write_cifar(tmp_path, protocol=2)
    for name in CIFAR_FILES:
        path = tmp_path / name
        raw = path.read_bytes()
        assert b"numpy._core.multiarray" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    check_cifar(data.load("cifar10", data_dir=tmp_path), written)


def test_cifar_str_keys(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    batch = {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [7]}
    path.write_bytes(pickle.dumps(batch))
    ds = data.load("cifar10", data_dir=tmp_path)
    assert ds.y_test.tolist() == [7] and float(ds.x_test.abs().sum()) == 0.0


class _Evil:
    """Unpickling this runs a shell command, which the CIFAR loader must refuse to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Evil, _EvalEvil])
@pytest.mark.parametrize("where", ["value", "whole-file"])
def test_cifar_malicious_pickle_is_refused_unexecuted(
    tmp_path: Path, payload: type, where: str
) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    evil = payload(marker)
    obj = {b"data": evil, b"labels": [0]} if where == "value" else evil
    (folder / "data_batch_3").write_bytes(pickle.dumps(obj))
    with pytest.raises(data.DataError) as excinfo:
        data.load("cifar10", data_dir=tmp_path)
    message = error_message(excinfo)
    assert "data_batch_3" in message
    assert not marker.exists()


def test_cifar_object_arrays_are_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    batch = {b"data": np.array([1, "x"], dtype=object), b"labels": [0, 1]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(data.DataError) as excinfo:
        data.load("cifar10", data_dir=tmp_path)
    assert "data_batch_1" in error_message(excinfo)


def test_cifar_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(data.DataError) as excinfo:
        data.load("cifar10", data_dir=tmp_path / "nowhere")
    message = error_message(excinfo)
    assert all(name in message for name in CIFAR_FILES)

    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(data.DataError) as excinfo:
        data.load("cifar10", data_dir=tmp_path)
    message = error_message(excinfo)
    assert all(name in message for name in CIFAR_FILES)
    assert str(tmp_path / "cifar-10-batches-py") in message


@pytest.mark.parametrize(
    "corrupt",
    ["truncated", "garbage", "not-a-dict", "wrong-row-size", "count-mismatch", "bad-label"],
)
def test_cifar_corrupt_batches(tmp_path: Path, corrupt: str) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    good = path.read_bytes()
    image = np.zeros((2, 3072), dtype=np.uint8)
    contents = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00not a pickle at all",
        "not-a-dict": pickle.dumps([1, 2, 3]),
        "wrong-row-size": pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        "count-mismatch": pickle.dumps({b"data": image, b"labels": [0, 1, 2]}),
        "bad-label": pickle.dumps({b"data": image, b"labels": [0, 10]}),
    }[corrupt]
    path.write_bytes(contents)
    with pytest.raises(data.DataError) as excinfo:
        data.load("cifar10", data_dir=tmp_path)
    assert "test_batch" in error_message(excinfo)
