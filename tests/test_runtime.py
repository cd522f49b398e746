"""Process settings: the allocator keeps freed blocks for speed and gives them back on request;
denormal floats are flushed to zero."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from elmrec.runtime import machine_info, release_free_memory, resolve_device, tune_allocator, tune_cpu


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


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="flush-to-zero is an x86 setting")
def test_tune_cpu_flushes_denormal_floats():
    """Denormals (slow on x86) become zero; the smallest normal float32 survives."""
    assert tune_cpu() or not sys.platform.startswith("linux")
    assert torch.tensor([1e-39]).mul(1.0).item() == 0.0
    assert torch.tensor([1.2e-38]).mul(1.0).item() > 0.0


def test_devices_that_do_not_exist_here_are_clear_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_machine_info_tells_cpu_generations_apart():
    """Reports must tell a Zen 2 from a Zen 4 that both call themselves "AMD EPYC"."""
    info = machine_info()
    family, model = info["cpu_family_model"].split("/")
    assert family.isdigit() and model.isdigit() and info["cpu"] and info["cores"] >= 1
    assert set(info["isa"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
