"""build_config: dicts and dataclasses, unknown keys, wrong types, impossible values."""

from dataclasses import dataclass
from typing import Literal

import pytest

from nexus_fast.config import build_config, require


@dataclass
class ToyConfig:
    img_size: int = 224
    patch_size: int = 16
    mask_ratio: float = 0.75
    pool: Literal["cls", "mean"] = "mean"
    scale: tuple[float, float] = (0.15, 0.2)
    norm_pix_loss: bool = True
    drop_path: float | None = None

    def validate(self) -> None:
        require(self.img_size % self.patch_size == 0, "img_size", self.img_size,
                f"a multiple of patch_size {self.patch_size}")  # fmt: skip
        require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio, "in [0, 1)")


def test_dict_and_instance_and_defaults() -> None:
    assert build_config(ToyConfig) == ToyConfig()
    config = build_config(
        ToyConfig, {"img_size": 32, "patch_size": 8, "mask_ratio": 0, "scale": [0.1, 0.3]}
    )
    assert config.mask_ratio == 0.0 and isinstance(config.mask_ratio, float)
    assert config.scale == (0.1, 0.3) and config.img_size == 32
    assert build_config(ToyConfig, config) == config


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"mask_ratoi": 0.5}, r"unknown key\(s\) 'mask_ratoi'; allowed: img_size, patch_size"),
        ({"img_size": "224"}, r"img_size='224' is not allowed: expected int"),
        ({"img_size": True}, "expected int"),
        ({"pool": "max"}, r"pool='max' is not allowed: expected one of 'cls', 'mean'"),
        ({"scale": (0.1,)}, "a sequence of 2 numbers"),
        ({"img_size": 225}, r"img_size=225 is not allowed: a multiple of patch_size 16"),
        ({"mask_ratio": 1.0}, r"mask_ratio=1\.0 is not allowed: in \[0, 1\)"),
        ({"drop_path": "x"}, "expected float or None"),
    ],
)
def test_bad_values_name_key_value_and_allowed(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(ToyConfig, value)


def test_not_a_mapping() -> None:
    with pytest.raises(TypeError, match="expected a dict or a ToyConfig"):
        build_config(ToyConfig, [("img_size", 3)])
