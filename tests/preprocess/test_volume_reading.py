"""unet_jax.preprocess.volumes: the --label_map rules that training preparation and prediction read alike."""

import pytest

from unet_jax.errors import DataError
from unet_jax.preprocess import volumes


def test_parse_label_map():
    assert volumes.parse_label_map("") == {}
    assert volumes.parse_label_map("1,2,3,4->1") == {1: 1, 2: 1, 3: 1, 4: 1}
    assert volumes.parse_label_map("2->1;1,3->2;4->3") == {2: 1, 1: 2, 3: 2, 4: 3}
    assert volumes.parse_label_map("4->3 2->0") == {4: 3, 2: 0}
    for bad in ("1,2", "1->", "->1", "1->2->3", "x->1", "1.5->1"):
        with pytest.raises(DataError, match="--label_map="):
            volumes.parse_label_map(bad)
