"""The criterion the kernel tests share: nexus_fast.testing.assert_within_reference_error."""

import pytest
import torch

from nexus_fast.testing import assert_within_reference_error


def test_error_within_factor_of_the_reference_error_passes_and_beyond_fails() -> None:
    exact = torch.tensor([1.0, 2.0], dtype=torch.float64)
    low = exact + 2**-10  # errors that are exact in binary: the bound is met with equality
    assert_within_reference_error(exact + 2**-9, low, exact, factor=2.0, floor=0.0)
    with pytest.raises(AssertionError, match=r"exceeds 2\.0 x reference error"):
        assert_within_reference_error(exact + 2**-9 + 2**-12, low, exact, factor=2.0, floor=0.0)


def test_relative_floor_scales_with_the_largest_exact_value() -> None:
    # A low-precision reference that lands exactly on the exact value leaves only the floor:
    # one float32 ulp at 23 (1.9e-6) passes a relative floor of 1e-6 x 23 but not the
    # absolute 1e-6, and twice the relative floor fails.
    exact = torch.tensor([-23.0, 0.5], dtype=torch.float64)
    one_ulp = torch.tensor([torch.finfo(torch.float32).eps * 16, 0.0], dtype=torch.float64)
    assert_within_reference_error(exact + one_ulp, exact, exact, floor=1e-6, relative_floor=1e-6)
    with pytest.raises(AssertionError, match=r"\+ 1\.0e-06"):
        assert_within_reference_error(exact + one_ulp, exact, exact, floor=1e-6)
    with pytest.raises(AssertionError, match=r"\+ 2\.3e-05"):
        assert_within_reference_error(exact + 4.7e-5, exact, exact, relative_floor=1e-6)
