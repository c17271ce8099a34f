"""Feature-regression losses and targets (I-JEPA, V-JEPA 2, data2vec 2.0) against their official
formulations: time and peak memory, forward and forward + backward (gradient of the predictions).

- jepa_loss vs I-JEPA's: layer-norm the whole teacher output, gather the targets, smooth L1.
- data2vec_loss vs fairseq's: targets repeated for the M clones, MSE on the masked tokens.
- data2vec_targets vs fairseq's: K instance-normalised layer copies stacked, averaged, layer-normed.

    python benchmarks/bench_regression.py [--quick] [--device cpu|cuda]
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends

import nexus_fast as nf
from nexus_fast.ops.reference import regression as official


def _official_ijepa(pred, teacher, ids):
    h = F.layer_norm(teacher, (teacher.size(-1),))
    h = torch.gather(h, 1, ids.unsqueeze(-1).repeat(1, 1, h.size(-1)))
    return F.smooth_l1_loss(pred, h)


def _cases_for(label, providers, pred, device) -> list[Case]:
    result = []
    for name, loss in providers.items():

        def forward(loss=loss) -> None:
            with torch.no_grad():
                loss()

        def full(loss=loss) -> None:
            torch.autograd.grad(loss(), pred)

        result.append(Case(name, label, "forward", forward, device=device))
        if pred is not None:
            result.append(Case(name, label, "full", full, device=device))
    return result


def jepa_cases(device: str, quick: bool) -> list[Case]:
    batch = 16 if quick else (256 if device == "cuda" else 64)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    length, dim, targets = 256, 1280, 4 * 44  # ViT-H/14 at 224: 16x16 patches, 4 target blocks
    teacher = torch.randn(batch, length, dim, device=device, dtype=dtype)
    pred = torch.randn(batch, targets, dim, device=device, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, length, (batch, targets), device=device)
    providers = {"official": lambda: _official_ijepa(pred.float(), teacher.float(), ids)}
    for backend in nexus_backends("feature_regression", device, include=("triton", "reference")):
        providers[f"nexus:{backend}"] = lambda b=backend: nf.ops.jepa_loss(
            pred, teacher, ids, backend=b
        )
    return _cases_for(
        f"jepa_loss B={batch} L={length} N={targets} D={dim}", providers, pred, device
    )


def data2vec_cases(device: str, quick: bool) -> list[Case]:
    batch, clones = (4, 4) if quick else ((64, 16) if device == "cuda" else (8, 16))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    length, dim = 196, 768
    targets = torch.randn(batch, length, dim, device=device)
    pred = torch.randn(batch * clones, length, dim, device=device, dtype=dtype, requires_grad=True)
    mask = torch.rand(batch * clones, length, device=device) < 0.8
    providers = {"official": lambda: official.data2vec_loss(pred, targets, mask, clones)}
    for backend in nexus_backends("feature_regression", device, include=("triton", "reference")):
        providers[f"nexus:{backend}"] = lambda b=backend: nf.ops.data2vec_loss(
            pred, targets, mask, clones, backend=b
        )
    label = f"data2vec_loss B={batch} M={clones} L={length} D={dim}"
    result = _cases_for(label, providers, pred, device)

    layers = [torch.randn(batch, length, dim, device=device, dtype=dtype) for _ in range(10)]
    target_providers = {"official": lambda: official.data2vec_targets(layers)}
    for backend in nexus_backends("data2vec_targets", device, include=("triton", "reference")):
        target_providers[f"nexus:{backend}"] = lambda b=backend: nf.ops.data2vec_targets(
            layers, backend=b
        )
    label = f"data2vec_targets K=10 B={batch} L={length} D={dim}"
    return result + _cases_for(label, target_providers, None, device)


def cases(device: str, quick: bool) -> list[Case]:
    return jepa_cases(device, quick) + data2vec_cases(device, quick)


main = benchmark_main("regression", cases, "official", __doc__)

if __name__ == "__main__":
    sys.exit(main())
