"""The --dtype flag's values as the transformers calls take them."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from retriever.model.dtype import config_dtype, torch_dtype


def test_auto_for_from_config_is_the_dtype_a_config_records() -> None:
    """``from_config`` takes no "auto": it gets the first recorded dtype (a name or a torch dtype), else None."""
    assert config_dtype("auto", SimpleNamespace(dtype="bfloat16")) == torch.bfloat16
    assert config_dtype("auto", SimpleNamespace(), SimpleNamespace(dtype=torch.float16)) == torch.float16
    assert config_dtype("auto", SimpleNamespace(dtype=None)) is None
    assert config_dtype("float64", SimpleNamespace(dtype="bfloat16")) == torch.float64
    assert config_dtype(None) is None and torch_dtype("auto") == "auto"
