"""The operator contract for every registered op: opcheck (schema, fake kernel, autograd
registration, AOT dispatch) and torch.compile(fullgraph=True) without graph breaks."""

import pytest
import torch
from op_samples import SAMPLES

import nexus_fast  # noqa: F401  (registers every op)


def _registered_ops() -> list[str]:
    prefix = "nexus_fast::"
    names = {
        n.removeprefix(prefix)
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith(prefix)
    }
    return sorted(names)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def test_every_registered_op_has_samples() -> None:
    ops = _registered_ops()
    assert "ema_update_" in ops, "nexus_fast._C did not register its ops (is the extension built?)"
    missing = [name for name in ops if name not in SAMPLES]
    assert not missing, f"add sample inputs to tests/op_samples.py for: {missing}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name: str) -> None:
    op = getattr(torch.ops.nexus_fast, name).default
    for args in SAMPLES[name]():
        torch.library.opcheck(op, _clone(args))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_compiles_fullgraph(name: str) -> None:
    op = getattr(torch.ops.nexus_fast, name).default
    for args in SAMPLES[name]():
        torch._dynamo.reset()
        eager_args, compiled_args = _clone(args), _clone(args)
        expected = op(*eager_args)
        actual = torch.compile(op, fullgraph=True, backend="aot_eager")(*compiled_args)
        torch.testing.assert_close(actual, expected)
        # In-place ops: the mutated inputs must match too.
        torch.testing.assert_close(_tensors(compiled_args), _tensors(eager_args))
