"""MAE's reconstruction figure: for a few test images, the original, what the encoder saw (the
masked patches blanked) and the reconstruction (the decoder's patches at the masked positions,
the visible patches pasted back, as the MAE paper shows them)."""

from pathlib import Path

import torch
from torch import Tensor, nn

from .. import ops


@torch.no_grad()
def plot_reconstructions(
    model: nn.Module, images: Tensor, path: str | Path, *, device: torch.device | str = "cpu"
) -> Path:
    """Writes a 3-row PNG (original / masked / reconstructed) of `images` (N, C, H, W uint8)
    through an MAE model; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    config = model.config
    was_training = model.training
    model.eval()
    x = images.to(device).float().div(255).sub(0.5).div(0.5)
    torch.manual_seed(0)
    _, reconstructed, mask = model(x)
    model.train(was_training)
    patch = config.patch_size
    if config.norm_pix_loss:
        # The decoder predicts per-patch standardised pixels: undo it with the true patch stats.
        target = ops.patchify(x, patch)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        reconstructed = reconstructed * (var + 1e-6).sqrt() + mean
    visible = ops.patchify(x, patch) * (1 - mask).unsqueeze(-1)
    pasted = torch.where(mask.bool().unsqueeze(-1), reconstructed, ops.patchify(x, patch))
    rows = [x, ops.unpatchify(visible, patch), ops.unpatchify(pasted, patch)]
    figure = Figure(figsize=(1.2 * images.shape[0], 3.8), dpi=100)
    FigureCanvasAgg(figure)
    titles = ("original", "masked", "reconstructed")
    for row, (title, batch) in enumerate(zip(titles, rows)):
        for column in range(images.shape[0]):
            axes = figure.add_subplot(3, images.shape[0], row * images.shape[0] + column + 1)
            picture = (batch[column] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu()
            axes.imshow(picture.squeeze(-1), cmap="gray", vmin=0, vmax=1)
            axes.set_axis_off()
            if column == 0:
                axes.set_title(title, fontsize=8, loc="left")
    path = Path(path)
    figure.savefig(path, bbox_inches="tight")
    return path
