"""The machine a run was measured on, read from the system: CPU model, cores, memory, load, library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "unknown"


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torchvision", "faiss-cpu", "hnswlib", "pillow", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def isa() -> str:
    """The vector instruction sets torch reports for this CPU, and whether it has native bf16 (AMX, AVX512-BF16)."""
    import torch

    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    wanted = ("avx2", "avx512_f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    present = [name for name in wanted if capabilities.get(name)]
    return (f"{torch.backends.cpu.get_cpu_capability()} kernels in torch; "
            f"{', '.join(present) or 'none of ' + ', '.join(wanted)}")


def describe() -> str:
    """One Markdown paragraph: CPU model and count, memory, Python, library versions, libjpeg-turbo."""
    from PIL import features

    memory = memory_gib()
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    turbo = features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else "no"
    return (
        f"**Machine:** {cpu_model()}, {cores} logical CPUs (os.cpu_count(); {usable} usable by this process), "
        f"{memory:.0f} GiB RAM, {platform.system()} {platform.release()}. "
        f"Python {platform.python_version()}; {versions}; libjpeg-turbo {turbo}. ISA: {isa()}."
        if memory is not None
        else f"**Machine:** {cpu_model()}, {cores} logical CPUs. Python {platform.python_version()}; {versions}."
    )
