"""The Trainer: exact resume, the NaN guard, checkpoints that survive a crash, accumulation,
SIGTERM, and 2 processes (gloo) equal to 1 process on the same global batch."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from nexus_fast.models.ssl import BarlowTwinsModel
from nexus_fast.testing import run_distributed
from nexus_fast.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nexus_fast.train.trainer import NonFiniteLossError, Trainer

SAMPLES = 32
MODEL = {
    "img_size": 8,
    "patch_size": 4,
    "in_chans": 1,
    "encoder_dim": 16,
    "encoder_depth": 1,
    "encoder_heads": 2,
    "projector_dims": (32, 32, 32),
}


def _data() -> torch.Tensor:
    return torch.rand(SAMPLES, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _inputs(data: torch.Tensor, poison_steps: set[int] | None = None, counter: list | None = None):
    """Two views: the images and their noisy copies drawn from the step's generator; optionally
    NaN images at some calls (to exercise the NaN guard)."""

    def inputs(indices: torch.Tensor, generator: torch.Generator):
        batch = data[indices]
        noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator)
        if counter is not None:
            counter.append(1)
            if poison_steps and len(counter) in poison_steps:
                noisy = noisy * float("nan")
        return (batch, noisy), {}

    return inputs


def _config(**changes) -> dict:
    config = {
        "steps": 6,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup_steps": 2,
        "log_every": 1,
        "checkpoint_every": 3,
        "keep_checkpoints": 5,
    }
    config.update(changes)
    return config


def _trainer(out_dir, seed: int = 0, **changes) -> Trainer:
    torch.manual_seed(seed)
    model = BarlowTwinsModel(MODEL)
    return Trainer(
        model, _config(**changes), _inputs(_data()), SAMPLES, out_dir, device="cpu", progress=False
    )


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    whole = _trainer(tmp_path)
    whole.fit()
    final = {name: value.clone() for name, value in whole.model.state_dict().items()}
    optimizer = whole.optimizer.state_dict()["state"]
    # A run killed after step 5: its last checkpoint is step 3, its history runs past it.
    import shutil

    shutil.rmtree(tmp_path / "step_00000006")
    (tmp_path / "latest").unlink()
    resumed = _trainer(tmp_path, seed=123)  # a different init: the checkpoint must replace it
    resumed.fit(resume=True)

    assert resumed.step == 6
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, final[name]), name
    for key, fields in resumed.optimizer.state_dict()["state"].items():
        for field, value in fields.items():
            assert torch.equal(value, optimizer[key][field]), (key, field)
    # The lines the killed run wrote after its checkpoint are dropped: one line per step.
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4, 5, 6]


def test_views_and_model_draw_from_different_streams(tmp_path):
    """The generator handed to `inputs` and torch's global generator (the model's masks) are
    seeded per step, but never alike: else a mask would reuse the crops' random numbers."""
    draws = []

    def inputs(indices: torch.Tensor, generator: torch.Generator):
        draws.append((torch.rand(64, generator=generator), torch.rand(64)))
        batch = _data()[indices]
        return (batch, batch.flip(-1)), {}

    torch.manual_seed(0)
    trainer = Trainer(
        BarlowTwinsModel(MODEL), _config(steps=2), inputs, SAMPLES, tmp_path, progress=False
    )
    trainer.fit()
    assert len(draws) == 2
    for views, model in draws:
        assert not torch.equal(views, model)
    assert not torch.equal(draws[0][0], draws[1][0])  # and each step draws anew


def test_resume_with_other_settings_is_refused(tmp_path):
    _trainer(tmp_path, steps=3).fit()
    with pytest.raises(ValueError, match=r"lr \(0.01 -> 0.005\)"):
        _trainer(tmp_path, steps=3, lr=5e-3).fit(resume=True)


def test_nan_guard_skips_counts_and_stops(tmp_path):
    torch.manual_seed(0)
    calls: list = []
    model = BarlowTwinsModel(MODEL)
    trainer = Trainer(
        model,
        _config(steps=4, nan_patience=3),
        _inputs(_data(), poison_steps={2}, counter=calls),
        SAMPLES,
        tmp_path / "one",
        progress=False,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    outcome = trainer.fit()
    assert outcome["skipped_steps"] == 1 and outcome["step"] == 4
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    calls = []
    trainer = Trainer(
        BarlowTwinsModel(MODEL),
        _config(steps=10, nan_patience=3),
        _inputs(_data(), poison_steps={2, 3, 4}, counter=calls),
        SAMPLES,
        tmp_path / "two",
        progress=False,
    )
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps in a row \(steps 2\.\.4"):
        trainer.fit()


def test_accumulation_matches_one_big_batch(tmp_path):
    # Barlow Twins normalises over the batch, so micro-batches change its loss: the forward is
    # replaced by a per-sample loss (a mean of squares), which two equal halves average exactly.
    data = _data()

    def inputs(indices, generator):
        batch = data[indices]
        return (batch, batch.flip(-1)), {}

    def gradients(accumulation: int, folder: str) -> list[torch.Tensor]:
        """The gradients the optimizer sees at the first step (Adam's update would magnify
        rounding in parameters whose gradient is ~0, such as the key bias)."""
        torch.manual_seed(0)
        model = BarlowTwinsModel(MODEL)
        model.forward = lambda a, b: (model.encode(a) - model.encode(b)).square().mean()
        config = _config(steps=1, warmup_steps=0, accumulation=accumulation)
        trainer = Trainer(model, config, inputs, SAMPLES, tmp_path / folder, progress=False)
        seen = []
        step = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, **k: (
            seen.extend(p.grad.clone() for p in model.parameters() if p.grad is not None),
            step(*a, **k),
        )[1]
        trainer.fit()
        return seen

    whole, split = gradients(1, "one"), gradients(2, "two")
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path):
    weights = {"w": torch.arange(4.0)}
    save_checkpoint(tmp_path, 1, weights, {"note": "first"})
    script = textwrap.dedent(
        f"""
        import os, torch
        import nexus_fast.train.checkpoint as checkpoint
        real_save = torch.save
        def dying_save(obj, path):
            real_save(obj, path)
            os._exit(9)  # killed after the weights and state are written, before the rename
        checkpoint.torch.save = dying_save
        checkpoint.save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.zeros(4)}}, {{}})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    loaded = load_checkpoint(latest)
    assert loaded.state["note"] == "first" and torch.equal(loaded.weights["w"], weights["w"])
    # The next save removes what the crashed writer left behind.
    assert any(path.name.startswith(".tmp-") for path in tmp_path.iterdir())
    save_checkpoint(tmp_path, 3, weights, {})
    assert not any(path.name.startswith(".tmp-") for path in tmp_path.iterdir())
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_sigterm_checkpoints_and_returns(tmp_path):
    torch.manual_seed(0)
    model = BarlowTwinsModel(MODEL)
    base = _inputs(_data())

    def inputs(indices, generator):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return base(indices, generator)

    trainer = Trainer(model, _config(), inputs, SAMPLES, tmp_path, progress=False)
    outcome = trainer.fit()
    assert outcome["interrupted"] and outcome["step"] == 3
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _distributed_run(rank: int, world_size: int, folder: str, mode: str = "ddp"):
    """Trains 3 steps; returns the gradients the optimizer saw at each step and the final
    batch-norm statistics. Gradients, not weights, are compared: AdamW turns the rounding noise
    of parameters whose true gradient is zero (the key bias, a LayerNorm bias that the
    projector's batch norm cancels) into full-size updates that differ between reduction orders.
    Under FSDP2 (`mode="fsdp"`) each rank holds a shard of every gradient: gathered whole."""
    torch.manual_seed(0)
    model = BarlowTwinsModel(MODEL)
    data = _data()

    def inputs(indices, generator):  # deterministic views: the same on any number of ranks
        batch = data[indices]
        return (batch, batch.flip(-1) * 0.5), {}

    config = _config(steps=3, lr=1e-2, distributed=mode)
    out = f"{folder}/{mode}{world_size}"
    trainer = Trainer(model, config, inputs, SAMPLES, out, progress=False)
    seen: list[list[torch.Tensor]] = []
    step = trainer.optimizer.step

    statistics: list[torch.Tensor] = []

    def whole(gradient: torch.Tensor) -> torch.Tensor:
        return gradient.full_tensor() if hasattr(gradient, "full_tensor") else gradient.clone()

    def recording_step(*args, **kwargs):
        seen.append([whole(p.grad) for p in trainer.model.parameters() if p.grad is not None])
        if not statistics:  # after the first forward, which every run makes from equal weights
            statistics.extend(b.clone() for n, b in trainer.model.named_buffers() if "running" in n)
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    sharded = any(hasattr(p, "full_tensor") for p in trainer.model.parameters())
    return seen, statistics, sharded


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one_process(tmp_path, mode):
    two = run_distributed(_distributed_run, 2, str(tmp_path), mode)
    one = _distributed_run(0, 1, str(tmp_path))
    assert not one[2]
    for rank in range(2):
        grads, statistics, sharded = two[rank]
        assert sharded == (mode == "fsdp")  # FSDP2's parameters are DTensor shards
        assert len(grads) == len(one[0]) == 3 and len(statistics) == len(one[1]) > 0
        # Step 1 starts from the same weights: the gradients agree to rounding. Later steps
        # start from weights that differ by the noise above, so they agree less tightly (a
        # missing global batch norm or a 1/world_size scaling would still be far outside).
        # Compared as one vector: single entries summed with heavy cancellation (the cls token's
        # gradient is a sum over the batch of nearly opposite terms) carry larger relative error.
        for step, (expected, actual) in enumerate(zip(one[0], grads)):
            expected = torch.cat([g.flatten() for g in expected])
            actual = torch.cat([g.flatten() for g in actual])
            error = (actual - expected).norm() / expected.norm()
            assert error < (1e-4 if step == 0 else 1e-2), (step, float(error))
        # The global batch norm's running statistics after the first step (equal weights): the
        # mean and variance over the global batch, not over one rank's half.
        for expected, actual in zip(one[1], statistics):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def test_collapsed_embeddings_warn_during_training(tmp_path):
    """Every sample the same image: the embeddings are identical, and after the warmup the
    trainer warns once with the remedies (nexus_fast.train.guards)."""
    from nexus_fast.train.guards import TrainingWarning

    same = torch.full((SAMPLES, 1, 8, 8), 0.5)
    torch.manual_seed(0)
    trainer = Trainer(
        BarlowTwinsModel(MODEL),
        _config(steps=4, checkpoint_every=100),
        lambda indices, generator: ((same[indices], same[indices]), {}),
        SAMPLES,
        tmp_path,
        device="cpu",
        progress=False,
    )
    with pytest.warns(TrainingWarning, match="collapse at step 2"):
        trainer.fit()


def test_a_falling_effective_rank_warns_during_training(tmp_path):
    """The trainer shows every evaluation to its RankMonitor: ranks 30 (what pretrain shows
    first: the random-init encoder's), 20, then 9 warn at the evaluation of step 4."""
    from nexus_fast.train.guards import TrainingWarning

    ranks = iter([20.0, 9.0, 9.0])
    torch.manual_seed(0)
    trainer = Trainer(
        BarlowTwinsModel(MODEL),
        _config(steps=6, eval_every=2, checkpoint_every=100),
        _inputs(_data()),
        SAMPLES,
        tmp_path,
        device="cpu",
        progress=False,
        evaluate=lambda model, step: {"effective_rank": next(ranks)},
    )
    trainer.rank_monitor.update(0, {"effective_rank": 30.0})
    with pytest.warns(TrainingWarning, match="dimensional collapse at step 4") as caught:
        trainer.fit()
    assert sum("dimensional collapse" in str(w.message) for w in caught) == 1
