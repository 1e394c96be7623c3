"""Memory settings for long data runs: the garbage collector and, on glibc, the allocator.

A sync allocates millions of short-lived containers (parsed pages, rows). CPython's collector counts
allocations and, every so often, walks every tracked object, including the hundreds of thousands that
the imports created (Prefect, pydantic and the FHIR models) and that live until exit: each full pass
then takes 100 ms or more, and measured syncs spent a large share of their time there. Freezing moves
the objects alive at start-up out of the collector's sight (they are still freed normally when unused),
and a larger first-generation threshold makes the young passes rarer: the pages and rows in flight live
for a while, so each young pass walked them again (measured: 1.3 s of a 50,000-resource sync's main
process at 20,000, about 0.1 s at 400,000). The threshold stays at 100,000: higher, cyclic garbage holding
finished pages waited long enough to raise peak memory by a hundred MB.

glibc's malloc raises its mmap threshold after each large block is freed, so later page-sized buffers
(1 MB pages, their JSON) come from the heap, which then fragments and does not shrink; and each thread
gets its own arena. Peak RSS of the main process grew with the number of pages (292 MB at 10,000
resources, 434 MB at 100,000); a fixed threshold and two arenas keep it near flat (270 and 359 MB).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys

#: Allocations (net of deallocations) between two young-generation passes; CPython's default is 700.
YOUNG_THRESHOLD = 100_000
#: glibc `mallopt` parameters (malloc.h) and the values set.
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def freeze_startup_objects() -> None:
    """Collect once, then keep everything alive now out of later collections; settle the allocator."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    _settle_allocator()


def _settle_allocator() -> None:
    """A fixed mmap threshold and two arenas, on Linux with glibc (elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # absent on musl: AttributeError
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(_M_ARENA_MAX, ARENA_MAX)


def quick_exit_collection() -> None:
    """Before the interpreter exits: out of the final collection's sight, the objects alive now are freed
    without walking them for cycles first. The imports' objects (Prefect's, pydantic's) made a CLI run's exit
    cost about 0.25 s; frozen, its teardown is near nothing. Finalizers registered to run at exit
    (`atexit`, `weakref.finalize`) and the flushing of the standard streams still happen."""
    gc.freeze()
