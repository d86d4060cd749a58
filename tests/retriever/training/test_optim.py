"""--optim: torch AdamW (plain and fused), bitsandbytes 8-bit variants with clear errors where they cannot run."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from retriever.training.optim import check_optimizer, optimizer_factory


def _step(name: str) -> torch.Tensor:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = optimizer_factory(name, lr=0.1, weight_decay=0.01)([{"params": [param]}])
    for _ in range(3):
        param.grad = param.detach() * 2 - 1
        optimizer.step()
    return param.detach()


def test_fused_adamw_is_adamw():
    optimizer = optimizer_factory("adamw_fused", 0.1, 0.0)([{"params": [torch.nn.Parameter(torch.ones(2))]}])
    assert optimizer.defaults["fused"] is True
    assert torch.allclose(_step("adamw_fused"), _step("adamw"), atol=1e-6)
    assert not torch.equal(_step("adamw"), torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))


def test_8bit_without_bitsandbytes_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails even where it is installed
    with pytest.raises(ValueError, match="needs bitsandbytes, which is not installed"):
        check_optimizer("adamw_8bit", None, cuda=True)
    check_optimizer("adamw_fused", {"zero_optimization": {"stage": 3}}, cuda=False)


@pytest.mark.parametrize("config, message", [
    ({"zero_optimization": {"stage": 3}}, "ZeRO-3 .* does not support 8-bit"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload needs DeepSpeed's CPU Adam"),
    ({"optimizer": {"type": "AdamW"}}, "contradicts the DeepSpeed config's own 'optimizer'"),
])
def test_8bit_under_deepspeed_only_where_supported(config, message):
    with pytest.raises(ValueError, match=message):
        check_optimizer("paged_adamw_8bit", config, cuda=True)


def test_8bit_with_bitsandbytes_builds_its_optimizer(monkeypatch):
    class AdamW8bit(torch.optim.AdamW):
        pass

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit, PagedAdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    check_optimizer("adamw_8bit", {"zero_optimization": {"stage": 2}}, cuda=False)
    with pytest.raises(ValueError, match="needs a GPU"):
        check_optimizer("paged_adamw_8bit", None, cuda=False)
    optimizer = optimizer_factory("adamw_8bit", 0.1, 0.0)([{"params": [torch.nn.Parameter(torch.ones(2))]}])
    assert isinstance(optimizer, AdamW8bit)


def test_trainer_refuses_8bit_before_loading_anything(tmp_path, monkeypatch, capsys):
    from retriever.training.recipe import main

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(SystemExit) as stop:  # a user error: one line, exit status 2
        main(["--model_name_or_path", str(tmp_path / "absent"), "--output_dir", str(tmp_path / "out"),
              "--train_data", str(tmp_path / "absent.jsonl"), "--optim", "adamw_8bit"])
    assert stop.value.code == 2
    assert "--optim adamw_8bit needs bitsandbytes, which is not installed" in capsys.readouterr().err
