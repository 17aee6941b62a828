"""Test configuration: environment before any framework import, backend fixtures, and the
hypothesis profiles (``NMN_ARRAY_HYPOTHESIS_PROFILE`` = ci | dev | thorough)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.backends import BACKENDS, NATIVE_CONV, required  # noqa: E402

_common = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "ci", derandomize=True, database=None, max_examples=25, print_blob=True, **_common
)
settings.register_profile("dev", max_examples=25, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
settings.load_profile(os.environ.get("NMN_ARRAY_HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    required()  # validate NMN_ARRAY_BACKENDS early, with a clear message


@pytest.fixture(params=BACKENDS, ids=str)
def backend(request: pytest.FixtureRequest):
    """Every backend; optional ones that do not import are skipped, required ones error."""
    b = request.param
    b.module()
    return b


@pytest.fixture(params=[b for b in BACKENDS if b.name in NATIVE_CONV], ids=str)
def native_backend(request: pytest.FixtureRequest):
    """Backends whose convolutions run on the library's own kernels."""
    b = request.param
    b.module()
    return b


@pytest.fixture(params=[b for b in BACKENDS if b.autodiff], ids=str)
def ad_backend(request: pytest.FixtureRequest):
    """Backends with automatic differentiation."""
    b = request.param
    b.module()
    return b
