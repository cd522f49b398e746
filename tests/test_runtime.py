"""Process settings: the allocator keeps freed blocks for speed, and gives them back on request."""

from __future__ import annotations

import sys

import pytest
import torch

from elmrec.runtime import release_free_memory, tune_allocator


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings are Linux-only")
def test_freed_memory_is_kept_and_released_on_request():
    assert tune_allocator()
    release_free_memory()  # what earlier tests freed would otherwise serve these blocks
    before = _rss_mb()
    blocks = [torch.ones(32, 1024, 1024) for _ in range(4)]  # 4 x 128 MB
    del blocks
    kept = _rss_mb()
    assert kept - before > 400  # kept in the heap: no page faults when the next step asks again
    assert release_free_memory()
    assert kept - _rss_mb() > 400
