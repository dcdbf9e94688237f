"""Where inference runs and in which number format: ``--device`` and ``--dtype`` for every inference command.

``auto`` picks the best thing present (a CUDA GPU, else Apple's MPS, else the CPU; bf16 on GPUs that have it,
fp16 on older ones, fp32 on the CPU). Asking for something that is not there is an error, never a silent fall-back
to the CPU: a user who typed ``--device cuda`` and got an hour of CPU time has been lied to.
"""

from __future__ import annotations

import atexit
import os

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp32", "bf16", "fp16")


def resolve_device(spec: str | None = "auto"):
    """``auto|cuda|cuda:N|mps|cpu`` -> ``torch.device``; an unavailable device raises :class:`ConfigError`.

    Under torchrun / ``accelerate launch`` ``auto`` and ``cuda`` mean this process's GPU (``LOCAL_RANK``).
    """
    import torch

    from vlens.errors import ConfigError

    spec = (spec or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("--device mps: this machine has no Apple GPU that torch can use "
                              "(torch.backends.mps.is_available() is False); use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: torch sees no CUDA GPU (torch {torch.__version__}, "
                              f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu, or install a CUDA "
                              "build of torch on a machine with an NVIDIA GPU")
        n = torch.cuda.device_count()
        idx = int(spec.split(":", 1)[1]) if ":" in spec and spec.split(":", 1)[1].isdigit() else None
        if ":" in spec and idx is None:
            raise ConfigError(f"--device {spec}: write cuda or cuda:N with N a GPU number")
        if idx is None:
            idx = local % n
        if idx >= n:
            raise ConfigError(f"--device {spec}: only {n} GPU(s) visible (cuda:0..cuda:{n - 1})")
        return torch.device("cuda", idx)
    raise ConfigError(f"unknown device '{spec}'; choose one of {', '.join(DEVICES)} (or cuda:N)")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_dtype(spec: str | None, device):
    """``auto|fp32|bf16|fp16`` (or torch names) -> ``torch.dtype`` for ``device``; impossible pairs raise."""
    import torch

    from vlens.errors import ConfigError

    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
    spec = (spec or "auto").strip().lower()
    kind = torch.device(device).type
    if spec == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.float32
    if spec not in names:
        raise ConfigError(f"unknown dtype '{spec}'; choose one of {', '.join(DTYPES)}")
    dtype = names[spec]
    if dtype == torch.float16 and kind == "cpu":
        raise ConfigError("--dtype fp16 on the CPU: many CPU kernels lack fp16 and the rest are slow; "
                          "use --dtype bf16 (same memory saving) or fp32")
    if dtype == torch.bfloat16 and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--dtype bf16: this GPU has no bf16 support (needs Ampere or newer); use --dtype fp16")
    return dtype


def dtype_name(dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def mixed_precision_for(spec: str | None) -> str:
    """A trainer's ``--mixed-precision`` (auto|no|fp32|bf16|fp16) -> accelerate's (auto|no|bf16|fp16).

    Mixed precision keeps fp32 master weights and runs the forward/backward in the low format (autocast).
    """
    import torch

    from vlens.errors import ConfigError

    spec = (spec or "auto").strip().lower()
    table = {"auto": "auto", "fp32": "no", "no": "no", "bf16": "bf16", "fp16": "fp16"}
    if spec not in table:
        raise ConfigError(f"unknown mixed precision '{spec}'; choose one of auto, no, bf16, fp16")
    if table[spec] == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (gradient scaling); on the CPU use bf16 or no")
    return table[spec]


def available_memory(device=None) -> int | None:
    """Bytes a computation on ``device`` can still use: free GPU memory for CUDA, ``MemAvailable`` (or the cgroup
    limit, when lower) for the CPU; None when it cannot be told."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            avail = min(avail, int(text)) if avail else int(text)
    return avail


class PeakMemory:
    """Peak memory of a block of work above what was in use when it started, in bytes (``.bytes`` after the
    block): CUDA's allocator peak on a GPU; on the CPU the growth of the process's resident set, sampled every
    ``interval`` seconds by a thread after the C heap's free memory went back to the system (a spike shorter
    than the interval can be missed). Use: ``with PeakMemory() as pm: ...; pm.bytes``."""

    def __init__(self, device=None, interval: float = 0.002):
        self.device, self.interval, self.bytes = device, interval, 0

    def __enter__(self):
        import threading

        import torch

        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self._cuda = dev.type == "cuda"
        if self._cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self._start = torch.cuda.memory_allocated(dev)
            return self
        _trim_heap()  # hand freed memory back first, so that reusing it counts as growth
        self._start = self._peak = _rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, _rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self._cuda:
            dev = torch.device(self.device)
            torch.cuda.synchronize(dev)
            self.bytes = max(0, torch.cuda.max_memory_allocated(dev) - self._start)
            return False
        self._stop.set()
        self._thread.join()
        self.bytes = max(0, max(self._peak, _rss()) - self._start)
        return False


def _trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``; a no-op elsewhere): without it, a
    block that reuses memory an earlier one freed shows no growth in the resident set."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    """This process's resident set in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def check_memory(need: int, device, what: str, advice) -> None:
    """A one-line ConfigError before allocating when ``need`` bytes will not fit in 80% of what is available
    (``VLENS_MEMORY_LIMIT`` in bytes overrides what is detected, for tests and shared machines). ``advice(budget)``
    says what to do, given the bytes that would fit."""
    from vlens.errors import ConfigError

    limit = os.environ.get("VLENS_MEMORY_LIMIT")
    have = int(float(limit)) if limit else available_memory(device)
    if have is not None and need > 0.8 * have:
        raise ConfigError(f"{what} needs about {_size(need)} of memory but {_size(have)} is available; "
                          f"{advice(0.8 * have)}")


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


_RELEASE_REGISTERED = False


def release_process_group_at_exit() -> None:
    """Destroy torch.distributed's process group when the interpreter exits (registered once; idempotent).

    Called wherever vlens joins the processes of a torchrun / ``accelerate launch`` run (:class:`vlens.bulk.Processes`,
    :func:`vlens.training.make_accelerator`). A gloo group still alive at interpreter teardown can abort its process
    with "terminate called without an active exception" (its worker threads outlive Python; pytorch issue 190489),
    which torchrun reports as a failed rank after the work was done.
    """
    global _RELEASE_REGISTERED
    if not _RELEASE_REGISTERED:
        _RELEASE_REGISTERED = True
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
