"""The dataset registry: every name resolves to a Dataset class taking (root, split); unknown names are errors."""

import inspect

import pytest
from torch.utils.data import Dataset

from eden_lib.data import DATASETS, dataset_class, open_dataset


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_loader_is_a_dataset_taking_root_and_split(name):
    cls = dataset_class(name)
    assert issubclass(cls, Dataset)
    params = list(inspect.signature(cls.__init__).parameters)
    assert params[1:3] == ["root", "split"], (name, params)


def test_unknown_dataset_names_the_registered_ones():
    with pytest.raises(KeyError, match="chexpert"):
        dataset_class("chexpret")


def test_open_dataset_reaches_the_loader(tmp_path):
    with pytest.raises(Exception, match=str(tmp_path.name)):  # the loader's own error names the missing file
        open_dataset("chexpert", tmp_path, "valid")
