"""`nexus-fast pretrain` and `nexus-fast eval`: settings parsing, bad input rejected with the
valid choices, and a tiny end-to-end run on an image folder followed by `eval knn`."""

import json

import numpy as np
import pytest
from PIL import Image

from nexus_fast.cli import main
from nexus_fast.train.settings import (
    epoch_overrides,
    parse_assignment,
    read_config_file,
    run_overrides,
)

TINY = [
    "--set=model.encoder_dim=32",
    "--set=model.encoder_depth=1",
    "--set=model.encoder_heads=2",
    "--set=model.expander_dims=(64, 64, 64)",
    "--set=batch_size=8",
    "--set=warmup_steps=0",
]


def _error(capsys, argv: list[str]) -> str:
    """Runs the command, expects exit status 2, returns stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


def test_set_values_are_python_literals_or_strings():
    assert parse_assignment("lr=2e-3") == ("lr", 2e-3)
    assert parse_assignment("model.projector_dims=(512, 512)") == (
        "model.projector_dims",
        (512, 512),
    )
    assert parse_assignment("clip_grad=None") == ("clip_grad", None)
    assert parse_assignment("optimizer=lars") == ("optimizer", "lars")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignment("lr")


def test_config_file_model_table_and_steps(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 0.001\noptimizer = "lars"\n[model]\nencoder_depth = 2\n')
    assert read_config_file(path) == {"lr": 0.001, "optimizer": "lars", "model.encoder_depth": 2}
    overrides = run_overrides("vicreg", str(path), ["lr=0.002"], steps=8)
    assert overrides["lr"] == 0.002  # --set wins over the file
    assert overrides["steps"] == 8
    assert overrides["warmup_steps"] == 0  # the default warmup (30) does not fit in 8 steps


def test_epochs_and_epoch_length_follow_the_data_set_size():
    sized = epoch_overrides("vicreg", {"lr": 0.002}, num_samples=1000, epochs=2)
    assert sized["steps"] == 8  # ceil(2 * 1000 / 256)
    assert sized["steps_per_epoch"] == 4  # round(1000 / 256)
    assert sized["warmup_steps"] == 0 and sized["lr"] == 0.002
    # The built-in training set (8,000 images) at batch 256; an explicit setting is kept.
    assert epoch_overrides("vicreg", {}, 8000)["steps_per_epoch"] == 31
    assert "steps" not in epoch_overrides("vicreg", {}, 8000)
    assert epoch_overrides("vicreg", {"steps_per_epoch": 7}, 8000)["steps_per_epoch"] == 7
    with pytest.raises(ValueError, match="--epochs 0 is not allowed"):
        epoch_overrides("vicreg", {}, 8000, epochs=0)


def test_unknown_trainer_key_lists_the_valid_ones(capsys):
    message = _error(capsys, ["pretrain", "--set", "stepz=3"])
    assert "'stepz'" in message and "batch_size" in message and "model.<field>" in message


def test_unknown_model_key_lists_the_model_fields(capsys):
    message = _error(capsys, ["pretrain", "--method", "vicreg", "--set", "model.depthh=2"])
    assert "'depthh'" in message and "encoder_depth" in message


def test_unknown_view_key_lists_the_augmentation_fields(capsys, tmp_path):
    argv = ["pretrain", "--set", "view.scal=(0.3, 1.0)", "--out", str(tmp_path)]
    message = _error(capsys, argv)
    assert "scal" in message and "solarize_p" in message


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["pretrain", "--set", "lr=-1"], "lr"),
        (["pretrain", "--set", "optimizer=sgd"], "optimizer"),
        (["pretrain", "--steps", "0"], "--steps"),
        (["pretrain", "--epochs", "-1", "--out", "{tmp}"], "--epochs -1.0"),
        (["pretrain", "--config", "missing.toml"], "missing.toml"),
        (["pretrain", "--dataset", "no/such/folder"], "no/such/folder"),
        (["eval", "knn", "--checkpoint", "no/such/run"], "no/such/run"),
    ],
)
def test_bad_values_name_the_value(capsys, tmp_path, argv, named):
    assert named in _error(capsys, [arg.replace("{tmp}", str(tmp_path)) for arg in argv])


@pytest.mark.parametrize(
    "argv", [["pretrain", "--method", "simclr"], ["pretrain", "--bogus"], ["eval", "fewshot"]]
)
def test_unknown_options_and_choices_exit_2_with_the_choices(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "simclr" not in argv or "barlow_twins" in error  # the valid methods are listed
    assert "error" in error


def _image_folder(root) -> None:
    """Two classes that a kNN can tell apart: bright squares on the left or on the right."""
    rng = np.random.default_rng(0)
    for label, side in (("left", slice(0, 14)), ("right", slice(14, 28))):
        (root / label).mkdir(parents=True)
        for index in range(12):
            pixels = rng.integers(0, 40, (28, 28), dtype=np.uint8)
            pixels[6:22, side] = 220
            Image.fromarray(pixels).save(root / label / f"{index}.png")


def test_pretrain_on_a_folder_then_eval_knn(tmp_path, capsys):
    _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["pretrain", "--dataset", str(tmp_path / "data"), "--steps", "2", "--out", str(run)]
    assert main([*argv, *TINY, "--no-linear", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "random init" in printed and "kNN" in printed
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and results["method"] == "vicreg"
    assert 0.0 <= results["pretrained"]["knn"] <= 1.0
    assert (run / "loss.png").is_file() and (run / "metrics.jsonl").is_file()

    assert main(["eval", "knn", "--checkpoint", str(run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    # The checkpoint's encoder is the trained one: the same kNN as at the end of the run.
    assert f"knn: {100 * results['pretrained']['knn']:.1f}%" in printed

    # A new run into a used folder would mix two runs: refused, naming --resume and --out.
    assert main([*argv, *TINY, "--no-linear", "--device", "cpu"]) == 2
    assert "--resume" in capsys.readouterr().err

    finetune = ["eval", "finetune", "--checkpoint", str(run), "--device", "cpu"]
    assert main([*finetune, "--set", "epochs=1", "--set", "batch_size=8"]) == 0
    assert "finetune: " in capsys.readouterr().out
    assert main([*finetune, "--set", "layer_decay=2"]) == 2
    assert "layer_decay" in capsys.readouterr().err
    assert main(["eval", "knn", "--checkpoint", str(run), "--set", "epochs=1"]) == 2
    assert "for `eval finetune` only" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_stopped_parts_minutes_and_random_init(tmp_path, capsys):
    _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["pretrain", "--dataset", str(tmp_path / "data"), "--steps", "2", "--out", str(run)]
    argv += [*TINY, "--no-linear", "--device", "cpu"]
    assert main(argv) == 0
    # As a SIGTERM leaves it: results.json of the stopped part, with its minutes.
    stopped = json.loads((run / "results.json").read_text())
    stopped.update(interrupted=True, minutes=5.0)
    (run / "results.json").write_text(json.dumps(stopped))
    assert main([*argv, "--resume"]) == 0
    resumed = json.loads((run / "results.json").read_text())
    assert 5.0 <= resumed["minutes"] < 6.0
    assert resumed["random_init"] == stopped["random_init"] is not None
    assert not resumed["interrupted"]


def test_epochs_count_passes_over_the_folder(tmp_path, capsys):
    # 24 images, 80% for training: 19; one epoch at batch 8 is ceil(19 / 8) = 3 steps.
    _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["pretrain", "--dataset", str(tmp_path / "data"), "--epochs", "1", "--out", str(run)]
    assert main([*argv, *TINY, "--no-linear", "--device", "cpu", "--set", "log_every=1"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 3
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [entry["epoch"] for entry in logged if "loss" in entry]
    assert epochs[-1] == pytest.approx(3 / 2)  # steps_per_epoch = round(19 / 8) = 2
