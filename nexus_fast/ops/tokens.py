"""Token gathers: `gather_tokens` (the encoder-side gather, e.g. position embeddings at the kept
patches) and `scatter_tokens` (MAE's decoder-side unshuffle that puts the mask token at every
removed position), both with gradients (the mask token's is the sum over removed positions).

Backends, fastest first: triton (CUDA), cpu (C++), reference (torch.gather; cat + gather).
"""

import torch
from torch import Tensor

from ._common import (
    as_index_tensor,
    check_index_range,
    cpu_kernel_reason,
    device_reasons,
    interpreter_reasons,
    resolve_op,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import patches as reference

__all__ = ["gather_tokens", "scatter_tokens"]


def _gather_rows_reference(source: Tensor, ids: Tensor, fill: Tensor | None, limit: int) -> Tensor:
    if fill is None:
        return reference.gather_tokens(source, ids)
    return reference.scatter_tokens(source, ids, fill)


def _scatter_add_reference(
    grad: Tensor, ids: Tensor, num_rows: int, sum_batch: bool
) -> tuple[Tensor, Tensor]:
    dim = grad.shape[-1]
    inside = (ids < num_rows).unsqueeze(-1)
    rows = grad.new_zeros(grad.shape[0], num_rows + 1, dim)
    # Rows beyond num_rows land in one spare row, dropped below; the fill gradient sums them.
    rows.scatter_add_(1, ids.clamp(max=num_rows).unsqueeze(-1).expand(-1, -1, dim), grad)
    rows = rows[:, :num_rows]
    if sum_batch:
        rows = rows.sum(0, keepdim=True)
    fill = torch.where(inside, 0, grad).sum((0, 1))
    return rows.contiguous(), fill


# --- Triton ops -----------------------------------------------------------------------------


@torch.library.custom_op("nexus_fast::gather_tokens_triton", mutates_args=())
def _gather_tokens_triton(tokens: Tensor, ids: Tensor) -> Tensor:
    launcher = triton_function("tokens", "gather_rows")
    return triton_cpu_path(launcher, _gather_rows_reference)(tokens, ids, None, tokens.shape[1])


@_gather_tokens_triton.register_kernel("cuda")
def _(tokens: Tensor, ids: Tensor) -> Tensor:
    return triton_function("tokens", "gather_rows")(tokens, ids, None, tokens.shape[1])


@torch.library.custom_op("nexus_fast::scatter_tokens_triton", mutates_args=())
def _scatter_tokens_triton(tokens: Tensor, ids_restore: Tensor, mask_token: Tensor) -> Tensor:
    launcher = triton_function("tokens", "gather_rows")
    fill = mask_token.reshape(-1).to(tokens.dtype).contiguous()
    return triton_cpu_path(launcher, _gather_rows_reference)(
        tokens, ids_restore, fill, ids_restore.shape[1]
    )


@_scatter_tokens_triton.register_kernel("cuda")
def _(tokens: Tensor, ids_restore: Tensor, mask_token: Tensor) -> Tensor:
    fill = mask_token.reshape(-1).to(tokens.dtype).contiguous()
    return triton_function("tokens", "gather_rows")(tokens, ids_restore, fill, ids_restore.shape[1])


@torch.library.custom_op("nexus_fast::scatter_add_tokens_triton", mutates_args=())
def _scatter_add_tokens_triton(
    grad: Tensor, ids: Tensor, num_rows: int, sum_batch: bool
) -> tuple[Tensor, Tensor]:
    launcher = triton_function("tokens", "scatter_add_tokens")
    return triton_cpu_path(launcher, _scatter_add_reference)(grad, ids, num_rows, sum_batch)


@_scatter_add_tokens_triton.register_kernel("cuda")
def _(grad: Tensor, ids: Tensor, num_rows: int, sum_batch: bool) -> tuple[Tensor, Tensor]:
    return triton_function("tokens", "scatter_add_tokens")(grad, ids, num_rows, sum_batch)


# --- fake kernels and gradients, shared by the C++ and the Triton ops -----------------------


def _fake_gather(tokens: Tensor, ids: Tensor) -> Tensor:
    return tokens.new_empty(ids.shape[0], ids.shape[1], tokens.shape[2])


def _fake_scatter(tokens: Tensor, ids_restore: Tensor, mask_token: Tensor) -> Tensor:
    return tokens.new_empty(ids_restore.shape[0], ids_restore.shape[1], tokens.shape[2])


def _fake_scatter_add(
    grad: Tensor, ids: Tensor, num_rows: int, sum_batch: bool
) -> tuple[Tensor, Tensor]:
    rows = grad.new_empty(1 if sum_batch else grad.shape[0], num_rows, grad.shape[2])
    return rows, grad.new_empty(grad.shape[2])


def _setup_gather(ctx, inputs, output) -> None:
    tokens, ids = inputs
    ctx.save_for_backward(ids)
    ctx.token_shape = tuple(tokens.shape)


def _setup_scatter(ctx, inputs, output) -> None:
    tokens, ids_restore, mask_token = inputs
    ctx.save_for_backward(ids_restore)
    ctx.kept = tokens.shape[1]
    ctx.mask_token_shape = tuple(mask_token.shape)
    ctx.mask_token_dtype = mask_token.dtype


def _gather_backward(scatter_add):
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        batch, rows, _ = ctx.token_shape
        sum_batch = batch == 1 and ids.shape[0] > 1  # a broadcast batch of one
        grad_tokens, _ = scatter_add(grad, ids, rows, sum_batch)
        return grad_tokens, None

    return backward


def _scatter_backward(scatter_add):
    def backward(ctx, grad: Tensor):
        (ids_restore,) = ctx.saved_tensors
        grad_tokens, grad_fill = scatter_add(grad, ids_restore, ctx.kept, False)
        grad_mask = grad_fill.reshape(ctx.mask_token_shape).to(ctx.mask_token_dtype)
        return grad_tokens, None, grad_mask

    return backward


def _register(gather, scatter, scatter_add) -> None:
    """Fake kernels and autograd for one family of ops (C++ or Triton)."""
    torch.library.register_fake(gather)(_fake_gather)
    torch.library.register_fake(scatter)(_fake_scatter)
    torch.library.register_fake(scatter_add)(_fake_scatter_add)
    torch.library.register_autograd(
        gather, _gather_backward(resolve_op(scatter_add)), setup_context=_setup_gather
    )
    torch.library.register_autograd(
        scatter, _scatter_backward(resolve_op(scatter_add)), setup_context=_setup_scatter
    )


_register(_gather_tokens_triton, _scatter_tokens_triton, _scatter_add_tokens_triton)
if hasattr(torch.ops.nexus_fast, "gather_tokens"):  # the compiled extension is loaded
    _register(
        "nexus_fast::gather_tokens", "nexus_fast::scatter_tokens", "nexus_fast::scatter_add_tokens"
    )


# --- operators ------------------------------------------------------------------------------


def _cpu_reasons(tokens: Tensor, *rest) -> list[str]:
    return device_reasons(tokens, "cpu")


GATHER_TOKENS = register(
    Operator(
        "gather_tokens",
        [
            Backend(
                "triton",
                _gather_tokens_triton,
                triton_machine_reason,
                lambda t, i: triton_reasons(t),
                lambda t, i: interpreter_reasons(t),
            ),
            Backend(
                "cpu",
                lambda t, i: torch.ops.nexus_fast.gather_tokens(t, i),
                cpu_kernel_reason("gather_tokens"),
                _cpu_reasons,
            ),
            Backend("reference", reference.gather_tokens),
        ],
    )
)

SCATTER_TOKENS = register(
    Operator(
        "scatter_tokens",
        [
            Backend(
                "triton",
                _scatter_tokens_triton,
                triton_machine_reason,
                lambda t, i, m: triton_reasons(t),
                lambda t, i, m: interpreter_reasons(t),
            ),
            Backend(
                "cpu",
                lambda t, i, m: torch.ops.nexus_fast.scatter_tokens(t, i, m),
                cpu_kernel_reason("scatter_tokens"),
                _cpu_reasons,
            ),
            Backend("reference", reference.scatter_tokens),
        ],
    )
)


def gather_tokens(tokens: Tensor, ids: Tensor, *, backend: str | None = None) -> Tensor:
    """tokens[b, ids[b, m]] for every b, m.

    Args:
        tokens: (B, N, D), or (1, N, D) broadcast over the batch of ids (position embeddings).
        ids: (B, M) integer indices in [0, N).
        backend: force "triton", "cpu" or "reference" (see NEXUS_FAST_BACKEND).

    Returns:
        (B, M, D) in tokens' dtype; the gradient flows to tokens (summed over a broadcast batch).

    Raises:
        ValueError: bad shapes. IndexError: an index outside [0, N) (GPU: device-side assert).
    """
    ids = as_index_tensor(ids, "ids")
    if tokens.dim() != 3 or ids.dim() != 2 or tokens.shape[0] not in (1, ids.shape[0]):
        raise ValueError(
            f"tokens must be (B, N, D) or (1, N, D) and ids (B, M), got {tuple(tokens.shape)} "
            f"and {tuple(ids.shape)}"
        )
    check_index_range(ids, tokens.shape[1], "ids", "tokens")
    return GATHER_TOKENS.select(tokens, ids, backend=backend).run(tokens, ids)


def scatter_tokens(
    tokens: Tensor, ids_restore: Tensor, mask_token: Tensor, *, backend: str | None = None
) -> Tensor:
    """MAE's unshuffle: the kept tokens back at their positions, the mask token everywhere else.

    Equal to the official `torch.gather(torch.cat([tokens, mask_tokens], 1), 1, ids_restore)`,
    in one pass and without the concatenated copy.

    Args:
        tokens: (B, K, D) the kept tokens, in the order of ids_keep.
        ids_restore: (B, L) for each position, its index in cat([kept, removed]) (a permutation
            of [0, L): values < K take a kept token, values >= K the mask token).
        mask_token: (D,) or (1, 1, D).
        backend: force "triton", "cpu" or "reference".

    Returns:
        (B, L, D); gradients flow to tokens and to mask_token.
    """
    ids_restore = as_index_tensor(ids_restore, "ids_restore")
    if tokens.dim() != 3 or ids_restore.dim() != 2 or tokens.shape[0] != ids_restore.shape[0]:
        raise ValueError(
            f"tokens must be (B, K, D) and ids_restore (B, L) with the same B, got "
            f"{tuple(tokens.shape)} and {tuple(ids_restore.shape)}"
        )
    if tokens.shape[1] > ids_restore.shape[1]:
        raise ValueError(
            f"{tokens.shape[1]} kept tokens do not fit {ids_restore.shape[1]} positions"
        )
    if mask_token.numel() != tokens.shape[2]:
        raise ValueError(
            f"mask_token must have {tokens.shape[2]} elements, got shape {tuple(mask_token.shape)}"
        )
    check_index_range(ids_restore, ids_restore.shape[1], "ids_restore", "positions")
    chosen = SCATTER_TOKENS.select(tokens, ids_restore, mask_token, backend=backend)
    return chosen.run(tokens, ids_restore, mask_token)
