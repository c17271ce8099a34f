"""jepa_loss, data2vec_targets, data2vec_loss: every backend against the official formulations
(float64), gradients, variable-length targets, clones indexed instead of repeated, errors,
compile."""

import pytest
import torch
import torch.nn.functional as F

import nexus_fast as nf
from nexus_fast.testing import assert_close

BACKENDS = ["reference", pytest.param("triton", marks=pytest.mark.interpret)]


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _official_ijepa(pred, teacher_tokens, masks):
    """facebookresearch/ijepa src/train.py: layer_norm, apply_masks, smooth_l1_loss."""
    h = F.layer_norm(teacher_tokens, (teacher_tokens.size(-1),))
    h = torch.gather(h, 1, masks.unsqueeze(-1).repeat(1, 1, h.size(-1)))
    return F.smooth_l1_loss(pred, h)


def _official_vjepa(pred, teacher_tokens, masks, loss_exp):
    """facebookresearch/vjepa2 app/vjepa/train.py: layer_norm, apply_masks, mean |z - h|^p / p."""
    h = F.layer_norm(teacher_tokens, (teacher_tokens.size(-1),))
    h = torch.gather(h, 1, masks.unsqueeze(-1).repeat(1, 1, h.size(-1)))
    return torch.mean(torch.abs(pred - h) ** loss_exp) / loss_exp


@pytest.mark.parametrize(
    ("loss", "loss_exp"), [("smooth_l1", 1.0), ("power", 1.0), ("power", 2.0)], ids=str
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_jepa_loss_is_the_official_loss(backend, loss, loss_exp, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 17, generator=generator).to(device).requires_grad_()
    teacher = (torch.randn(3, 11, 17, generator=generator) * 3 + 1).to(device)
    ids = torch.randint(0, 11, (3, 5), generator=generator).to(device)
    value = nf.ops.jepa_loss(pred, teacher, ids, loss=loss, loss_exp=loss_exp, backend=backend)
    exact_pred = pred.detach().double().requires_grad_()
    if loss == "smooth_l1":
        exact = _official_ijepa(exact_pred, teacher.double(), ids)
    else:
        exact = _official_vjepa(exact_pred, teacher.double(), ids, loss_exp)
    assert_close(value, exact.float())
    (grad,) = torch.autograd.grad(value, pred)
    (exact_grad,) = torch.autograd.grad(exact, exact_pred)
    assert_close(grad, exact_grad.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_jepa_loss_counts_only_valid_targets(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 6, 8, generator=generator).to(device).requires_grad_()
    teacher = torch.randn(2, 9, 8, generator=generator).to(device)
    ids = torch.randint(0, 9, (2, 6), generator=generator).to(device)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool, device=device)
    value = nf.ops.jepa_loss(pred, teacher, ids, valid=valid, backend=backend)
    # The same as the official loss over the real entries only (a padded set equals a shorter one).
    rows = [pred[0, :4], pred[1]]
    targets = [F.layer_norm(teacher[b], (8,))[ids[b, : len(rows[b])]] for b in range(2)]
    expected = F.smooth_l1_loss(torch.cat(rows), torch.cat(targets))
    assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, pred)
    assert torch.equal(grad[0, 4:], torch.zeros_like(grad[0, 4:])), "padding gets no gradient"


def test_jepa_loss_without_indices_and_bf16() -> None:
    pred = torch.randn(2, 4, 8).bfloat16()
    target = torch.randn(2, 4, 8)
    value = nf.ops.jepa_loss(pred, target, loss="power")
    expected = _official_vjepa(pred.double(), target.double(), torch.arange(4).expand(2, 4), 1.0)
    assert value.dtype == torch.float32
    assert_close(value, expected.float())


def _official_data2vec_targets(layers):
    """fairseq data2vec2.py make_targets with instance_norm_target_layer and layer_norm_targets."""
    target_layer_results = [
        F.instance_norm(tl.transpose(1, 2).float()).transpose(1, 2) for tl in layers
    ]
    y = target_layer_results[0].float()
    for tl in target_layer_results[1:]:
        y.add_(tl.float())
    y = y.div_(len(target_layer_results))
    return F.layer_norm(y, y.shape[-1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_data2vec_targets_are_the_official_targets(backend, dtype, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(2)
    layers = [
        (torch.randn(2, 37, 24, generator=generator) * (i + 1)).to(dtype).to(device)
        for i in range(4)
    ]
    targets = nf.ops.data2vec_targets(layers, backend=backend)
    assert targets.dtype == torch.float32 and targets.shape == (2, 37, 24)
    expected = _official_data2vec_targets([layer.double() for layer in layers])
    torch.testing.assert_close(targets, expected, atol=1e-4, rtol=1e-4)


def _official_data2vec_loss(pred, targets, mask, clones, cls_pred):
    """fairseq data2vec2.py: targets repeated per clone, MSE summed over D, scaled by 1/sqrt(D).
    fairseq casts the prediction with .float(); this oracle runs in the targets' float64 instead
    (a float32 / float64 mse_loss has no CUDA backward in torch 2.11: seen on the H200)."""
    scale = 1 / pred.size(-1) ** 0.5
    y = targets.repeat_interleave(clones, 0)
    reg = F.mse_loss(pred[mask].to(y.dtype), y[mask], reduction="none").sum(dim=-1) * scale
    cls_target = targets.mean(dim=1).repeat_interleave(clones, 0)
    cls = F.mse_loss(cls_pred.to(y.dtype), cls_target, reduction="none").sum(dim=-1) * scale
    # The criterion divides every loss by sample_size; the cls loss was scaled by it first.
    return reg.sum() / mask.sum() + 0.01 * cls.sum()


@pytest.mark.parametrize("clones", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_data2vec_loss_is_the_official_loss(backend, clones, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(3)
    targets = torch.randn(2, 13, 16, generator=generator).to(device)
    pred = torch.randn(2 * clones, 13, 16, generator=generator).to(device).requires_grad_()
    cls_pred = torch.randn(2 * clones, 16, generator=generator).to(device).requires_grad_()
    mask = (torch.rand(2 * clones, 13, generator=generator) < 0.7).to(device)
    value = nf.ops.data2vec_loss(pred, targets, mask, clones, cls_pred=cls_pred, backend=backend)
    exact_inputs = [
        pred.detach().double().requires_grad_(),
        cls_pred.detach().double().requires_grad_(),
    ]
    exact = _official_data2vec_loss(
        exact_inputs[0], targets.double(), mask, clones, exact_inputs[1]
    )
    assert_close(value, exact.float())
    grads = torch.autograd.grad(value, (pred, cls_pred))
    exact_grads = torch.autograd.grad(exact, exact_inputs)
    for actual, expected in zip(grads, exact_grads):
        assert_close(actual, expected.float())
    assert torch.equal(grads[0][~mask], torch.zeros_like(grads[0][~mask])), "unmasked: no gradient"


def _jepa(pred_shape, target_shape, **options):
    return lambda: nf.ops.jepa_loss(torch.zeros(pred_shape), torch.zeros(target_shape), **options)


def _data2vec(pred_shape, mask, clones):
    return lambda: nf.ops.data2vec_loss(torch.zeros(pred_shape), torch.zeros(2, 3, 2), mask, clones)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (_jepa((2, 3, 4), (2, 5, 4), loss="l2"), "loss must be"),
        (_jepa((2, 3, 4), (2, 5, 4)), "without target_ids"),
        (_jepa((2, 3, 4), (2, 5, 3)), "must share B and D"),
        (_jepa((2, 3, 4), (2, 3, 4), loss_exp=0), "loss_exp"),
        (_data2vec((4, 3, 2), torch.ones(4, 3).bool(), 3), r"\(B \* M, L, D\)"),
        (_data2vec((4, 3, 2), torch.ones(4, 3), 2), "mask must be bool"),
        (
            lambda: nf.ops.data2vec_targets([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)]),
            "one shape",
        ),
    ],
)
def test_bad_arguments(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("triton", marks=pytest.mark.interpret)]
)
def test_losses_compile_with_gradients(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    pred = torch.randn(2, 4, 8, device=device, requires_grad=True)
    teacher = torch.randn(2, 6, 8, device=device)
    ids = torch.tensor([[0, 5, 2, 2], [1, 3, 4, 0]], device=device)

    def step(pred):
        return nf.ops.jepa_loss(pred, teacher, ids, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(pred), pred)
    (expected,) = torch.autograd.grad(step(pred), pred)
    assert_close(grad, expected)
