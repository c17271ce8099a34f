"""MAE's masked patch loss (norm_pix, 75% masking) at ViT-B/16 shapes (PERF.md, "End to end": the
loss is one step of the MAE sequence).

Providers: the official formulation (models_mae.py: patchify by einsum, normalise with the
unbiased variance, squared error, masked mean; autograd backward), and each nexus_fast backend
usable here (reference, cpu, triton on a GPU). Modes: forward (with pred requiring grad, as in
training), backward (the forward untimed before each repetition) and full. Rate: GB/s against
the floor of the fused kernels, which read the image and pred values of the masked patches once
(and the backward writes the (B, L, P) gradient).

    python benchmarks/bench_masked_patch_loss.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends

import nexus_fast as nf

PATCH = 16
MASK_RATIO = 0.75
OFFICIAL = "official MAE forward_loss"


def official_forward_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """models_mae.py MaskedAutoencoderViT.patchify + forward_loss with norm_pix_loss, verbatim."""
    p = PATCH
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    target = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    return (loss * mask).sum() / mask.sum()  # mean loss on removed patches


def nexus_loss(backend: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """nexus_fast's loss with one backend forced, in the official argument order."""

    def loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return nf.ops.masked_patch_loss(pred, imgs, mask, PATCH, True, backend=backend)

    return loss


def random_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """models_mae.py random_masking's mask (float, 1 = removed)."""
    device = generator.device
    noise = torch.rand(batch, length, device=device, generator=generator)
    ids_restore = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, : int(length * (1 - MASK_RATIO))] = 0
    return torch.gather(mask, 1, ids_restore)


class LossCall:
    """One provider's loss on fixed inputs; keeps the last loss so backward can be timed alone."""

    def __init__(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        pred: torch.Tensor,
        images: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        self.loss_fn = loss_fn
        self.pred, self.images, self.mask = pred, images, mask
        self.loss: torch.Tensor | None = None

    def reset(self) -> None:
        """Drops the last graph and gradient, untimed, so that each repetition allocates anew."""
        self.pred.grad = None
        self.loss = None

    def forward(self) -> None:
        self.loss = self.loss_fn(self.images, self.pred, self.mask)

    def backward(self) -> None:
        self.loss.backward()

    def full(self) -> None:
        self.forward()
        self.backward()

    def reset_and_forward(self) -> None:
        self.reset()
        self.forward()


def _modes(call: LossCall) -> dict:
    """mode -> (timed function, untimed setup)."""
    return {
        "forward": (call.forward, call.reset),
        "backward": (call.backward, call.reset_and_forward),
        "full": (call.full, call.reset),
    }


def cases(device: str, quick: bool) -> list[Case]:
    backends = nexus_backends("masked_patch_loss", device, include=("cpu", "triton", "reference"))
    # (batch, pred dtype): ViT-B/16 at MAE's batch 256, and a smaller batch. bf16 pred on the GPU,
    # as in MAE's mixed-precision training; fp32 on the CPU.
    pred_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batches = (32,) if quick else (32, 256)
    result = []
    for batch in batches:
        generator = torch.Generator(device=device).manual_seed(batch)
        images = torch.randn(batch, 3, 224, 224, device=device, generator=generator)
        length, volume = (224 // PATCH) ** 2, PATCH * PATCH * 3
        pred_values = torch.randn(batch, length, volume, device=device, generator=generator)
        mask = random_mask(batch, length, generator)
        masked = batch * length * MASK_RATIO
        forward_bytes = masked * volume * (images.element_size() + pred_dtype.itemsize)
        backward_bytes = forward_bytes + batch * length * volume * pred_dtype.itemsize
        work = {
            "forward": forward_bytes,
            "backward": backward_bytes,
            "full": forward_bytes + backward_bytes,
        }
        label = f"ViT-B/16 B={batch} {str(pred_dtype).removeprefix('torch.')}"
        providers = {OFFICIAL: None, **{f"nexus:{b}": b for b in backends}}
        for provider, backend in providers.items():
            pred = pred_values.to(pred_dtype).requires_grad_()
            loss_fn = official_forward_loss if backend is None else nexus_loss(backend)
            call = LossCall(loss_fn, pred, images, mask)
            for mode, (fn, setup) in _modes(call).items():
                result.append(Case(provider, label, mode, fn, {"bytes": work[mode]}, device, setup))
    return result


main = benchmark_main("masked_patch_loss", cases, OFFICIAL, __doc__)


if __name__ == "__main__":
    sys.exit(main())
