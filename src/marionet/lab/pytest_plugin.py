"""Pytest fixtures for lab-backed tests.

Register in ``tests/conftest.py`` with ``pytest_plugins = ["marionet.lab.pytest_plugin"]``.

``make_lab(spec)`` is a context manager that builds the lab and always tears
it down (also when the test body raises); ``lab_factory`` is a fixture
returning a function that builds labs torn down at the end of the test.
Both skip with "needs root" when not root.  ``world_lab`` is a module-scoped
``small_world()`` lab (three VPs registered with the lab's controller), for
tests that need VPs but not a lab of their own.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import pytest

from .spec import Spec


def _skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@contextlib.contextmanager
def make_lab(spec: Spec | str, **kw: Any) -> Iterator[Any]:
    """Build ``spec``, yield the Lab, always tear down."""
    _skip_unless_root()
    from .core import Lab

    lab = Lab(spec, **kw)
    try:
        lab.up()
        yield lab
    finally:
        problems = lab.down()
        if problems:
            raise RuntimeError(f"lab teardown left problems: {problems}")


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Any]]:
    """``lab = lab_factory(spec)``: up now, down after the test."""
    _skip_unless_root()
    from .core import Lab

    labs: list[Any] = []

    def factory(spec: Spec | str, **kw: Any) -> Any:
        lab = Lab(spec, **kw)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield factory
    finally:
        for lab in reversed(labs):
            lab.down()


@pytest.fixture
def linear_lab(lab_factory: Callable[..., Any]) -> Any:
    """client — r1 — r2 — r3 — target, dual-stack, no impairments."""
    from .spec import linear_path

    return lab_factory(linear_path(3))


@pytest.fixture(scope="module")
def world_lab() -> Iterator[Any]:
    """``small_world()``: vp-de/vp-us/vp-jp registered with the lab's controller (one per module)."""
    from .spec import small_world

    with make_lab(small_world()) as lab:
        yield lab
