"""The built-in dataset: its files load, the split is METHODS.md's, the kNN baselines reproduce,
and the restricted unpickler refuses a pickle that would run code."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from nexus_fast.data import CLASSES, animal_shapes_split, load_animal_shapes
from nexus_fast.data.animal_shapes import load_array
from nexus_fast.eval import knn_accuracy


def test_the_dataset_loads_sorted_by_class() -> None:
    images, labels = load_animal_shapes()
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))
    assert len(CLASSES) == 10 and torch.equal(labels[:1000], torch.zeros(1000, dtype=torch.long))


def test_split_and_the_raw_pixel_baselines_of_methods_md() -> None:
    train_x, train_y = animal_shapes_split("train")
    test_x, test_y = animal_shapes_split("test")
    assert len(train_y) == 8000 and len(test_y) == 2000
    a, b = train_x.float().flatten(1) / 255, test_x.float().flatten(1) / 255
    mean = a.mean(0)
    # METHODS.md: raw centred pixels 90.0%, a random ReLU projection to 192 dims 78.8%.
    assert abs(knn_accuracy(a - mean, train_y, b - mean, test_y) - 0.900) < 0.002
    torch.manual_seed(0)
    projection = torch.randn(784, 192)
    random = knn_accuracy((a @ projection).relu(), train_y, (b @ projection).relu(), test_y)
    assert abs(random - 0.788) < 0.002
    with pytest.raises(ValueError, match="split='val'"):
        animal_shapes_split("val")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_runs_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(pickle.dumps(_RunsCode()))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global posix\.system"):
        load_array(path)
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as handle:
        handle.write(pickle.dumps(np.arange(6, dtype=np.int64)))
    assert load_array(good).tolist() == [0, 1, 2, 3, 4, 5]
