"""Process-level settings: the device, and two CPU settings that keep training steps fast.

- Allocator: T5's attention allocates 100+ MB tensors for direct prompts, which glibc serves with
  fresh mmap()s and returns on free, so every step page-faults them in again. Freed memory stays in
  the heap instead (no mmap, no trimming) until ``release_free_memory`` hands it back.
- Denormal floats (below 1.2e-38) take a slow path on x86 CPUs, and a trained model's attention
  probabilities fall there more and more; ``tune_cpu`` flushes them to zero (what they would add
  to any sum is below float32 resolution). Measured effects of both: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def tune_allocator() -> bool:
    """Ask glibc to keep large freed blocks (Linux only; a no-op elsewhere). Returns success."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok


def tune_cpu() -> bool:
    """``tune_allocator`` and flush-to-zero for denormal floats (x86 with SSE3; elsewhere a no-op).
    Returns whether both took effect."""
    return tune_allocator() & torch.set_flush_denormal(True)


def release_free_memory() -> bool:
    """Give freed heap memory back to the OS now (glibc ``malloc_trim``; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a device that does not exist here is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# instruction sets that change which matrix kernels run (and so speed and float results)
_ISA = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine_info() -> dict:
    """What a benchmark figure depends on: the CPU model (float results and speed differ between
    CPU families, so "x86_64" is not enough), the core count, the OS and the torch build. A
    virtual machine may name its CPU only "AMD EPYC" for several generations (Zen 2 and Zen 4
    here, 1.3x apart), so the family and model numbers and the vector extensions are kept too."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "platform": platform.platform(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return info
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu"] = fields.get("model name", info["cpu"])
    if "cpu family" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
    flags = set(fields.get("flags", "").split())
    info["isa"] = [x for x in _ISA if x in flags]
    return info
