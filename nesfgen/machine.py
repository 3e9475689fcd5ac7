"""The facts about a machine that make a training or decoding time meaningful."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from nesfgen.errors import UserError


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


def resolve_device(name: str, what: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; otherwise the named device, checked to exist here (``what`` names the
    option in the message: train.device, device=)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} asks for CUDA but no CUDA device is available; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what} asks for Apple's MPS but it is not available here; use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{what} {name!r}: nesfgen runs on cpu, cuda or mps")
    return device
