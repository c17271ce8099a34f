"""DINOv2's image-level (DINO) and patch-level (iBOT) losses, and the teacher's centering.

Teacher side (no gradient): DINOCenter.softmax_center turns teacher logits into probabilities
softmax((t - center) / tau_t) and DINOCenter.update moves the center towards the mean of the
global batch, its all-reduce overlapping the student's forward as in DINOv2; or
nexus_fast.ops.sinkhorn_knopp for the large configurations.

Student side: each term is the soft-target cross-entropy -sum_k t_k log_softmax(s / tau_s)_k
(nexus_fast.ops.prototype_loss). Since it is linear in t, a student crop scored against several
teacher crops is scored once against the sum of their probabilities: DINOv2's local crops (each
against both teacher globals) cost one log-softmax, not two. dino_prototype_loss goes further and
fuses the head's last layer into the loss (no rows x K logits).

Backends of dino_loss and ibot_patch_loss, fastest first: triton (the soft cross-entropy kernel,
which computes the gradient in the forward), reference (log_softmax and autograd).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed
from ._common import interpreter_reasons, triton_machine_reason
from ._dino_common import check_floating, check_positive, check_same_device
from ._dispatch import Backend, Operator, register
from .prototype_loss import (
    prototype_cross_entropy,
    soft_cross_entropy_reasons,
    soft_cross_entropy_rows,
    target_mass,
)
from .reference import dino as reference

PAIRS = ("dinov2", "all")


# --- crop pairing -------------------------------------------------------------------------------


def crop_pairs(n_students: int, n_teachers: int, pairs: str) -> list[tuple[int, ...]]:
    """The teacher crops that each student crop is scored against.

    "dinov2": student crop i < n_teachers is global crop i and meets every teacher crop but its
    own view (with two globals: the other one); every later (local) crop meets every teacher
    crop. "all": every student crop meets every teacher crop (DINOLoss.forward's double loop).
    """
    teachers = tuple(range(n_teachers))
    if pairs == "all":
        return [teachers] * n_students
    return [
        tuple(j for j in teachers if j != i) if i < n_teachers else teachers
        for i in range(n_students)
    ]


def _check_pairs(pairs: object) -> str:
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {', '.join(map(repr, PAIRS))}, got {pairs!r}")
    return pairs


def _check_crops(
    student: object, teacher_probs: object, student_name: str, dims_name: str
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Both lists as tuples of floating (B, .) tensors of one batch size and one device."""
    for name, value in ((student_name, student), ("teacher_probs", teacher_probs)):
        if isinstance(value, Tensor) or not isinstance(value, Sequence) or len(value) == 0:
            raise TypeError(f"{name} must be a non-empty list of tensors (one per crop)")
    students = tuple(
        check_floating(f"{student_name}[{i}]", s, dims_name) for i, s in enumerate(student)
    )
    teachers = tuple(
        check_floating(f"teacher_probs[{i}]", t, "(B, K)") for i, t in enumerate(teacher_probs)
    )
    if len(teachers) > len(students):
        raise ValueError(
            f"{len(teachers)} teacher crops but {len(students)} student crops: the first "
            "student crops are the teacher's global crops, in the same order"
        )
    batch, prototypes = teachers[0].shape
    for i, t in enumerate(teachers):
        if tuple(t.shape) != (batch, prototypes):
            raise ValueError(
                f"teacher_probs[{i}] has shape {tuple(t.shape)}; teacher_probs[0] has "
                f"{(batch, prototypes)}: every crop holds the same images"
            )
    for i, s in enumerate(students):
        if s.shape[0] != batch:
            raise ValueError(
                f"{student_name}[{i}] has {s.shape[0]} rows, teacher_probs {batch}: every crop "
                "holds the same images"
            )
    check_same_device(
        **{f"{student_name}[{i}]": s for i, s in enumerate(students)},
        **{f"teacher_probs[{i}]": t for i, t in enumerate(teachers)},
    )
    return students, teachers


def _pair_targets(
    teachers: tuple[Tensor, ...], groups: list[tuple[int, ...]]
) -> dict[tuple[int, ...], Tensor]:
    """One target per distinct group of teacher crops: the crop itself, or the sum of their
    probabilities (computed once, in float32 or float64)."""
    dtype = reference.compute_dtype(*teachers)
    targets = {}
    for group in dict.fromkeys(groups):
        if len(group) == 1:
            targets[group] = teachers[group[0]]
        elif group:
            total = teachers[group[0]].to(dtype, copy=True)
            for j in group[1:]:
                total += teachers[j]
            targets[group] = total
    return targets


def _term_count(groups: list[tuple[int, ...]]) -> int:
    terms = sum(len(group) for group in groups)
    if terms == 0:
        raise ValueError(
            "no (student, teacher) pair to score: with pairs='dinov2' a single teacher crop needs "
            "at least one local crop (a global crop is never scored against its own view)"
        )
    return terms


# --- dino_loss ----------------------------------------------------------------------------------


def _dino_loss(
    students: tuple[Tensor, ...],
    teachers: tuple[Tensor, ...],
    student_temp: float,
    pairs: str,
    use_triton: bool,
) -> Tensor:
    groups = crop_pairs(len(students), len(teachers), pairs)
    terms = _term_count(groups)
    targets = _pair_targets(teachers, groups)
    # Row sums of each distinct target, once: the local crops share theirs.
    masses = {group: target_mass(target) for group, target in targets.items()} if use_triton else {}
    rows = max(teachers[0].shape[0], 1)
    total = 0
    for student, group in zip(students, groups):
        if group:
            losses = soft_cross_entropy_rows(
                student, targets[group], student_temp, use_triton=use_triton,
                mass=masses.get(group),
            )  # fmt: skip
            total = total + losses.sum() / rows
    return total / terms


def _run(use_triton: bool):
    def run(students, teachers, student_temp, pairs) -> Tensor:
        return _dino_loss(students, teachers, student_temp, pairs, use_triton)

    return run


def _crops_triton_reasons(students, teachers, *rest) -> list[str]:
    reasons = soft_cross_entropy_reasons(*students, *teachers)
    if torch.is_grad_enabled() and any(t.requires_grad for t in teachers):
        reasons.append(
            "teacher_probs require grad: the Triton kernel treats the teacher as a constant "
            "(only the reference differentiates it)"
        )
    return reasons


DINO_LOSS = register(
    Operator(
        "dino_loss",
        [
            Backend(
                "triton",
                _run(use_triton=True),
                triton_machine_reason,
                _crops_triton_reasons,
                lambda students, *rest: interpreter_reasons(students[0]),
            ),
            Backend("reference", _run(use_triton=False)),
        ],
    )
)


def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_probs: Sequence[Tensor],
    student_temp: float = 0.1,
    *,
    pairs: str = "dinov2",
    backend: str | None = None,
) -> Tensor:
    """DINO's cross-entropy between student crops and teacher crops, as DINOv2 pairs them.

    loss = sum over (student crop c, teacher crop j) pairs of
    mean_b -sum_k t_j[b, k] log_softmax(s_c[b] / student_temp)_k, divided by the number of
    pairs (DINOv2's SSLMetaArch: (n_global - 1) * n_global + n_local * n_global terms).
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021; Oquab et
    al., "DINOv2", 2023.

    Args:
        student_logits: one (B, K) tensor per student crop: the global crops first, in the order
            of teacher_probs, then the local crops.
        teacher_probs: one (B, K) tensor per teacher (global) crop, e.g. from
            DINOCenter.softmax_center or sinkhorn_knopp.
        student_temp: tau_s (DINOv2: 0.1).
        pairs: "dinov2" (global crop i against every other teacher crop, each local crop against
            every teacher crop) or "all" (every student crop against every teacher crop).
        backend: force "triton" or "reference".

    Returns:
        A 0-dim tensor (float32; float64 for float64 inputs on the reference), differentiable
        with respect to the student logits (and, on the reference, the teacher probabilities).

    Raises:
        TypeError: not a list of floating tensors.
        ValueError: shapes that differ between crops, more teacher crops than student crops, no
            pair to score, a non-positive student_temp, an unknown pairs.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> teacher = [torch.softmax(torch.randn(4, 64) / 0.04, -1) for _ in range(2)]
        >>> student = [torch.randn(4, 64, requires_grad=True) for _ in range(2 + 8)]
        >>> dino_loss(student, teacher).backward()
    """
    students, teachers = _check_crops(student_logits, teacher_probs, "student_logits", "(B, K)")
    for i, s in enumerate(students):
        if s.shape[1] != teachers[0].shape[1]:
            raise ValueError(
                f"student_logits[{i}] has {s.shape[1]} prototypes, teacher_probs "
                f"{teachers[0].shape[1]}"
            )
    student_temp = check_positive("student_temp", student_temp)
    arguments = (students, teachers, student_temp, _check_pairs(pairs))
    _term_count(crop_pairs(len(students), len(teachers), pairs))
    return DINO_LOSS.select(*arguments, backend=backend).run(*arguments)


def dino_prototype_loss(
    student_features: Sequence[Tensor],
    weight: Tensor,
    teacher_probs: Sequence[Tensor],
    student_temp: float = 0.1,
    *,
    pairs: str = "dinov2",
    chunk_rows: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """dino_loss of the crops' head outputs, with the head's last layer fused into the loss.

    Equal to dino_loss([normalize(f) @ (weight / ||weight||)^T for f in student_features],
    teacher_probs, ...), computed by one prototype_cross_entropy over every crop's rows (each
    row scored against the summed probabilities of its teacher crops through target_index), so
    no crop's (B, K) logits are ever held.

    Args:
        student_features: one (B, D) tensor per student crop (bottleneck outputs, before the L2
            normalisation), ordered as in dino_loss.
        weight: (K, D) the last layer's weight_v (g = 1).
        teacher_probs, student_temp, pairs: as dino_loss.
        chunk_rows, backend: as prototype_cross_entropy.

    Returns:
        A 0-dim float32 tensor, differentiable with respect to the features and the weight.
    """
    students, teachers = _check_crops(student_features, teacher_probs, "student_features", "(B, D)")
    pairs = _check_pairs(pairs)
    groups = crop_pairs(len(students), len(teachers), pairs)
    terms = _term_count(groups)
    targets = _pair_targets(teachers, groups)
    batch = teachers[0].shape[0]
    first_row = {}
    table = []
    for group, target in targets.items():
        first_row[group] = batch * len(table)
        table.append(target.to(reference.compute_dtype(*teachers)))
    positions = torch.arange(batch, device=teachers[0].device)
    scored = [(s, group) for s, group in zip(students, groups) if group]
    features = torch.cat([s for s, _ in scored])
    index = torch.cat([positions + first_row[group] for _, group in scored])
    loss = prototype_cross_entropy(
        features,
        weight,
        torch.cat(table),
        student_temp,
        target_index=index,
        chunk_rows=chunk_rows,
        backend=backend,
    )
    return loss * (len(scored) / terms)


# --- iBOT ---------------------------------------------------------------------------------------


def _token_weights(masks: Tensor, rows: int, flattened: bool, dtype: torch.dtype) -> Tensor:
    """Per scored row: 1 / (masked tokens of its image), so that each image weighs the same."""
    counts = masks.sum(dim=-1)  # (B,)
    inverse = 1.0 / counts.clamp(min=1).to(dtype)
    if not flattened:
        return (masks.to(dtype) * inverse.unsqueeze(-1)).reshape(-1)
    # Row r of the flattened tokens is the r-th masked token in masks' row-major order.
    ends = torch.cumsum(counts, dim=0)
    image = torch.searchsorted(ends, torch.arange(rows, device=masks.device), right=True)
    return inverse[image.clamp(max=masks.shape[0] - 1)]


def _check_masked_count(masks: Tensor, rows: int) -> None:
    if masks.is_cuda:
        torch._assert_async(
            masks.sum() == rows, "the flattened tokens must be the masked tokens of masks"
        )
        return
    if torch.compiler.is_compiling():
        return
    masked = int(masks.sum())
    if masked != rows:
        raise ValueError(
            f"student_patch_logits holds {rows} flattened tokens but masks marks {masked}: "
            "flattened tokens must be exactly the masked ones, in masks' row-major order"
        )


def _ibot_loss(student, teacher, masks, student_temp, use_triton: bool) -> Tensor:
    flattened = student.dim() == 2
    if not flattened:
        student = student.reshape(-1, student.shape[-1])
        teacher = teacher.reshape(-1, teacher.shape[-1])
    losses = soft_cross_entropy_rows(student, teacher, student_temp, use_triton=use_triton)
    weights = _token_weights(masks, student.shape[0], flattened, losses.dtype)
    return (losses * weights).sum() / max(masks.shape[0], 1)


def _ibot_run(use_triton: bool):
    def run(student, teacher, masks, student_temp) -> Tensor:
        return _ibot_loss(student, teacher, masks, student_temp, use_triton)

    return run


IBOT_PATCH_LOSS = register(
    Operator(
        "ibot_patch_loss",
        [
            Backend(
                "triton",
                _ibot_run(use_triton=True),
                triton_machine_reason,
                lambda student, teacher, *rest: _crops_triton_reasons((student,), (teacher,)),
                lambda student, *rest: interpreter_reasons(student),
            ),
            Backend("reference", _ibot_run(use_triton=False)),
        ],
    )
)


def ibot_patch_loss(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
    *,
    backend: str | None = None,
) -> Tensor:
    """iBOT's masked-token cross-entropy as DINOv2 computes it (iBOTPatchLoss.forward_masked).

    Each masked token's cross-entropy -sum_k t_k log_softmax(s / student_temp)_k weighs
    1 / (masked tokens of its image); the weighted sum is divided by the number of images, so
    every image with a masked token counts once and one without counts 0. Zhou et al., "iBOT:
    Image BERT Pre-Training with Online Tokenizer", 2022.

    Args:
        student_patch_logits: (n_masked, K) the masked tokens only, in masks' row-major order
            (DINOv2's layout: tokens[masks]); or (B, L, K) every token (unmasked ones weigh 0).
        teacher_patch_probs: the teacher's probabilities in the same layout.
        masks: (B, L) bool, True where the student's token was masked.
        student_temp: tau_s (DINOv2: 0.1).
        backend: force "triton" or "reference".

    Returns:
        A 0-dim tensor (float32; float64 for float64 inputs on the reference), differentiable
        with respect to the student logits.

    Raises:
        TypeError: non-tensor or non-floating logits, a non-bool mask.
        ValueError: shapes that do not match, a flattened row count other than masks.sum()
            (checked on CPU; a device-side assert on CUDA), a non-positive student_temp.
        BackendError: a forced backend cannot run these inputs (the error says why).
    """
    if not isinstance(student_patch_logits, Tensor):
        raise TypeError(
            f"student_patch_logits must be a Tensor, got {type(student_patch_logits).__name__}"
        )
    dims = 3 if student_patch_logits.dim() == 3 else 2
    shape = "(B, L, K)" if dims == 3 else "(n_masked, K) or (B, L, K)"
    check_floating("student_patch_logits", student_patch_logits, shape, dims)
    check_floating("teacher_patch_probs", teacher_patch_probs, shape, dims)
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.dim() != 2:
        described = (
            f"{masks.dtype} tensor of shape {tuple(masks.shape)}"
            if isinstance(masks, Tensor)
            else type(masks).__name__
        )
        raise TypeError(f"masks must be a (B, L) bool tensor, got {described}")
    check_same_device(
        student_patch_logits=student_patch_logits,
        teacher_patch_probs=teacher_patch_probs,
        masks=masks,
    )
    if teacher_patch_probs.shape != student_patch_logits.shape:
        raise ValueError(
            f"teacher_patch_probs has shape {tuple(teacher_patch_probs.shape)}, "
            f"student_patch_logits {tuple(student_patch_logits.shape)}: they must match"
        )
    if dims == 3:
        if tuple(student_patch_logits.shape[:2]) != tuple(masks.shape):
            raise ValueError(
                f"student_patch_logits has shape {tuple(student_patch_logits.shape)}; masks "
                f"{tuple(masks.shape)} need (B, L, K) = ({masks.shape[0]}, {masks.shape[1]}, K)"
            )
    else:
        _check_masked_count(masks, student_patch_logits.shape[0])
    student_temp = check_positive("student_temp", student_temp)
    arguments = (student_patch_logits, teacher_patch_probs, masks, student_temp)
    return IBOT_PATCH_LOSS.select(*arguments, backend=backend).run(*arguments)


# --- the teacher's center -----------------------------------------------------------------------


class DINOCenter(nn.Module):
    """DINO's teacher centering: a running mean of the teacher's logits over the global batch.

    softmax_center(t, tau_t) = softmax((t - center) / tau_t); update(t) starts moving the center
    towards the mean of t over every rank, center <- m * center + (1 - m) * mean, with an
    asynchronous all-reduce (DINOv2's reduce_center_update) that completes when the next
    softmax_center (or apply_update) runs, so the communication overlaps the student's forward.
    The mean is over the rows of every rank (their counts are all-reduced with the sums, so
    ranks may hold different numbers of rows).

    Args:
        dim: K, the number of prototypes.
        momentum: m (DINOv2: 0.9).
        gather: average over the default process group's ranks (when one is initialised).

    Example:
        >>> center = DINOCenter(65536)
        >>> probs = center.softmax_center(teacher_logits, 0.04)  # doctest: +SKIP
        >>> center.update(teacher_logits)                         # doctest: +SKIP
    """

    center: Tensor

    def __init__(self, dim: int, momentum: float = 0.9, *, gather: bool = True) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a number, got {type(momentum).__name__}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.gather = gather
        self.register_buffer("center", torch.zeros(1, dim))
        self._pending: tuple[Tensor, object | None] | None = None

    def _check(self, teacher_logits: object) -> Tensor:
        check_floating("teacher_logits", teacher_logits, f"(rows, {self.center.shape[1]})")
        if teacher_logits.shape[1] != self.center.shape[1]:
            raise ValueError(
                f"teacher_logits has shape {tuple(teacher_logits.shape)}; this center holds "
                f"{self.center.shape[1]} prototypes"
            )
        return teacher_logits

    @torch.no_grad()
    def softmax_center(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        """(rows, K) float32 probabilities softmax((t - center) / temperature), after applying
        a pending update."""
        self._check(teacher_logits)
        temperature = check_positive("temperature", temperature)
        self.apply_update()
        center = self.center.to(teacher_logits.device)
        return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor) -> None:
        """Starts the update with this batch (sums and row count all-reduced asynchronously)."""
        self._check(teacher_logits)
        self.apply_update()  # a previous batch whose update was never applied is not lost
        count = torch.full((1,), teacher_logits.shape[0], device=teacher_logits.device)
        statistics = torch.cat([teacher_logits.float().sum(dim=0), count.float()])
        handle = None
        if self.gather:
            statistics, handle = distributed.all_reduce_sum_async(statistics)
        self._pending = (statistics, handle)

    @torch.no_grad()
    def apply_update(self) -> None:
        """Waits for the pending all-reduce, if any, and moves the center."""
        if self._pending is None:
            return
        statistics, handle = self._pending
        self._pending = None
        if handle is not None:
            handle.wait()
        count = statistics[-1]
        mean = statistics[:-1] / count.clamp(min=1.0)
        moved = self.center * self.momentum + mean.to(self.center.device) * (1 - self.momentum)
        # No rows anywhere: keep the center (without a host sync).
        self.center.copy_(torch.where(count > 0, moved, self.center))

    def extra_repr(self) -> str:
        return f"dim={self.center.shape[1]}, momentum={self.momentum}, gather={self.gather}"
