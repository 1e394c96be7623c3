"""Memory settings for long runs: the collector's young threshold, frozen start-up objects, glibc malloc."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from connector import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_start_up_objects_are_frozen_and_young_passes_made_rare(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc_tuning.sys, "platform", "darwin")  # the allocator is another test's
    kept = [object() for _ in range(10)]
    gc_tuning.freeze_startup_objects()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD


def test_glibc_gets_a_fixed_mmap_threshold_and_two_arenas(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    libc = _FakeLibc()
    monkeypatch.setattr(gc_tuning.sys, "platform", "linux")
    monkeypatch.setattr(gc_tuning.ctypes, "CDLL", lambda _name: libc)
    gc_tuning.freeze_startup_objects()
    assert libc.calls == [(-3, 128 * 1024), (-8, 2)]  # M_MMAP_THRESHOLD, M_ARENA_MAX (malloc.h)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_leave_the_allocator_alone(
    platform: str, restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    libc = _FakeLibc()
    monkeypatch.setattr(gc_tuning.sys, "platform", platform)
    monkeypatch.setattr(gc_tuning.ctypes, "CDLL", lambda _name: libc)
    gc_tuning.freeze_startup_objects()
    assert libc.calls == []


def test_a_libc_without_mallopt_is_no_error(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_tuning.sys, "platform", "linux")
    monkeypatch.setattr(gc_tuning.ctypes, "CDLL", lambda _name: object())  # musl: no mallopt
    gc_tuning.freeze_startup_objects()
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD
