"""Without nexus_fast._C the package imports, runs every operator on its reference or Python
paths, says why the compiled kernels are missing, and refuses a forced C++ backend with that
reason. A subprocess hides the extension (sys.modules entry None makes its import fail)."""

import subprocess
import sys
import textwrap


def test_package_works_and_says_so_without_the_extension() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["nexus_fast._C"] = None
        import torch
        import nexus_fast as nf
        from nexus_fast.info import report
        assert not nf.extension_is_built()
        teacher, student = [torch.zeros(5)], [torch.ones(5)]
        nf.ops.ema_update_(teacher, student, 0.25)
        assert torch.equal(teacher[0], torch.full((5,), 0.75)), teacher
        try:
            nf.ops.ema_update_(teacher, student, 0.25, backend="cpu")
        except nf.ops.BackendError as error:
            assert "nexus_fast._C is not built" in str(error), error
        else:
            raise AssertionError("a forced cpu backend must fail without the extension")
        print(report())
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "extension  nexus_fast._C NOT BUILT" in run.stdout
    assert "cpu        unavailable: nexus_fast._C is not built" in run.stdout
