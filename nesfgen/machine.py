"""The facts about a machine that make a training or decoding time meaningful."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_description() -> dict[str, Any]:
    """CPU model, core count, GPU (if any) and the torch and Python versions of this process."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
