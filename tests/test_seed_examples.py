"""The seed document's code blocks (../shared/seed/ssl_methods_README.md), run as written with
`nexus_fast` in place of `nexus`, at small sizes: a 224-px ViT-B becomes a 32-px ViT-Tiny, a
GPU `.cuda()` becomes the CPU, and sklearn's k-NN our kNN helper."""

import torch

IMAGES = torch.randn(8, 3, 32, 32)
LABELS = torch.arange(8) % 2


def test_basic_usage() -> None:
    from nexus_fast.models.ssl import MAE

    config = {"img_size": 32, "patch_size": 8, "encoder_dim": 192, "mask_ratio": 0.75}
    model = MAE(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4)
    for images in [IMAGES, IMAGES.flip(0)]:
        loss, reconstructed, mask = model(images)
        loss.backward()
        optimizer.step()
    features = model.encode(images)
    assert features.shape == (8, 192)
    assert reconstructed.shape == (8, 16, 8 * 8 * 3) and mask.shape == (8, 16)


def test_multi_view_methods() -> None:
    from nexus_fast.models.ssl import BarlowTwinsModel, VICRegModel

    def augment(images):
        return images + 0.1 * torch.randn_like(images)

    for cls in (VICRegModel, BarlowTwinsModel):
        model = cls(cls.preset("tiny"))
        view1 = augment(IMAGES)
        view2 = augment(IMAGES)
        loss, metrics = model(view1, view2)
        assert loss.dim() == 0 and torch.isfinite(loss) and "embedding_std" in metrics


def test_video_methods() -> None:
    from nexus_fast.models.ssl import VJEPAModel

    model = VJEPAModel(VJEPAModel.preset("tiny"))
    video = torch.randn(4, 3, 4, 32, 32)  # (B, C, T, H, W); the seed's is (4, 3, 16, 224, 224)
    loss, metrics = model(video)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_learning_rate_schedule() -> None:
    from nexus_fast.train import cosine_schedule_with_warmup

    warmup_epochs = 40
    total_epochs = 800
    lr_schedule = cosine_schedule_with_warmup(
        base_lr=1e-3, warmup_epochs=warmup_epochs, total_epochs=total_epochs
    )
    assert lr_schedule.shape == (800,) and lr_schedule.max() == 1e-3


def test_ema_update_loop_equals_ema_update_() -> None:
    import nexus_fast as nf
    from nexus_fast.models.ssl import JEPAModel

    model = JEPAModel(JEPAModel.preset("tiny"))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    online_encoder, target_encoder = model.encoder, model.target_encoder
    expected = [t.detach().clone() for t in target_encoder.parameters()]
    # The seed's loop:
    momentum = 0.996
    for target_param, online_param in zip(expected, online_encoder.parameters()):
        target_param.data = momentum * target_param.data + (1 - momentum) * online_param.data
    # nexus_fast's one-launch update:
    nf.ops.ema_update_(target_encoder, online_encoder, momentum)
    for actual, wanted in zip(target_encoder.parameters(), expected):
        torch.testing.assert_close(actual, wanted)


def test_linear_probing_fine_tuning_and_knn() -> None:
    from torch import nn
    from torch.optim import AdamW

    from nexus_fast.eval import knn_accuracy
    from nexus_fast.models.ssl import DINOv2Model

    model = DINOv2Model(DINOv2Model.preset("tiny"))
    encoder_dim, num_classes = model.config.encoder_dim, 2
    # Linear probing: freeze the encoder, train a linear head.
    for param in model.encoder.parameters():
        param.requires_grad = False
    linear_head = nn.Linear(encoder_dim, num_classes)
    logits = linear_head(model.encode(IMAGES))
    nn.functional.cross_entropy(logits, LABELS).backward()
    assert linear_head.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())
    # Fine-tuning: unfreeze, lower learning rate.
    for param in model.encoder.parameters():
        param.requires_grad = True
    optimizer = AdamW(model.parameters(), lr=1e-5)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) > 0
    # k-NN evaluation, with nexus_fast.eval in place of sklearn's KNeighborsClassifier.
    with torch.no_grad():
        train_features = model.encode(IMAGES)
        test_features = model.encode(IMAGES)
    accuracy = knn_accuracy(train_features, LABELS, test_features, LABELS, k=3)
    assert 0.0 <= accuracy <= 1.0


def test_mae_quick_start() -> None:
    from nexus_fast.models.ssl import MAE

    config = {
        "img_size": 32,
        "patch_size": 8,
        "encoder_dim": 192,
        "decoder_dim": 64,
        "decoder_heads": 4,
        "mask_ratio": 0.75,
    }
    model = MAE(config)  # the seed moves it to .cuda(); CPU here
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4)
    losses = []
    for images in [IMAGES] * 3:
        loss, reconstructed, mask = model(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        features = model.encode(IMAGES)
    assert features.shape == (8, 192) and all(map(lambda value: value == value, losses))
