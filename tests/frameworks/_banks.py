"""Fixtures of the kernel-bank tests (``tie_kernel_bank``): ``test_banks_torch.py``,
``test_banks_nnx.py`` and ``keras_backends/test_banks_keras.py``.

A test module binds them at module level (pytest finds fixtures by those names):
``_fresh_banks = _banks.fresh_banks(registry, ...)`` and ``bank_id = _banks.bank_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def fresh_banks(*registries: Any) -> Callable[[], Iterator[None]]:
    """An autouse fixture that clears ``registries`` (our module's ``_BANKS``, nmn's
    class-level bank dicts) before and after each test, so no bank leaks between tests."""

    @pytest.fixture(autouse=True)
    def _fresh_banks() -> Iterator[None]:
        for registry in registries:
            registry.clear()
        yield
        for registry in registries:
            registry.clear()

    return _fresh_banks


@pytest.fixture
def bank_id(request: pytest.FixtureRequest) -> str:
    """A bank id of this test alone (also keeps nmn's class-level registries apart)."""
    return f"bank-{request.node.nodeid}"
