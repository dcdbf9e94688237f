"""How many CPU threads vlens runs, and how they wait: one policy, applied by every entry point before torch loads.

Why this exists: on a machine where something else runs (a browser, a second job, our own decode workers),
torch's CPU defaults collapse. The torch wheel uses GNU OpenMP, whose threads *spin* at every barrier waiting
for a partner thread that the kernel has descheduled: one AdamW step of builtin:clip-tiny took 1,531 ms beside
one busy process instead of 24 ms (2 cores). The policy:

- **waiting**: ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a wait policy (or ``GOMP_SPINCOUNT``). A waiting
  thread sleeps instead of spinning. libgomp reads this once, when torch loads, which is why every entry point
  (the CLI, ``python -m vlens``, torchrun/accelerate processes, ``vlens serve``) applies the policy first;
- **threads**: the cores this process may use (CPU affinity and the cgroup CPU quota, not ``os.cpu_count()``),
  divided among the processes torchrun/accelerate start on this node (``LOCAL_WORLD_SIZE``) and the server's
  concurrent requests, less one core per decode worker (each worker runs one thread);
- ``--threads N`` on the command line, else ``VLENS_THREADS``, else ``OMP_NUM_THREADS`` (its first number: OpenMP's
  nested form ``4,2`` is valid), overrides the count, lowered with a note to the usable cores; ``VLENS_CPU_POLICY=off``
  leaves torch's defaults alone (the baseline of benchmarks/bench_cpu_policy.py; ``on`` is the default, anything
  else is refused).

Library users make the same choice with one call, before importing torch::

    import vlens
    vlens.use_cpu_policy()          # or use_cpu_policy(threads=1)
    import torch

Measured figures (benchmarks/bench_cpu_policy.py) are in README "Speed on a shared machine".
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

THREADS_ENV = "VLENS_THREADS"
_AUTO_MARK = "VLENS_AUTO_OMP_NUM_THREADS"  # the OMP_NUM_THREADS value apply() chose, so it is not read as the user's


@dataclass(frozen=True)
class CpuPlan:
    """What one process runs: ``threads`` intra-op threads beside ``workers`` one-thread decode workers,
    ``slots`` concurrent requests of ``threads`` each (the web server), out of ``cores`` usable cores."""

    cores: int
    threads: int
    workers: int = 0
    slots: int = 1
    wait_policy: str = "PASSIVE"
    source: str = "auto"  # auto | --threads | VLENS_THREADS | OMP_NUM_THREADS
    asked: int | None = None  # an explicit count above the usable cores, lowered to them (see note())

    def note(self) -> str:
        """One line for the CLI when the count asked for was lowered to the usable cores, else ""."""
        if self.asked is None:
            return ""
        return (f"note: {self.source} asks for {self.asked} threads but this process may use {self.cores} core(s); "
                f"running {self.threads} (more threads than cores only wait for each other)")

    def describe(self) -> str:
        extra = f", {self.workers} decode worker(s)" if self.workers else ""
        extra += f", {self.slots} concurrent requests" if self.slots > 1 else ""
        return (f"{self.threads} torch thread(s) per task{extra} on {self.cores} usable core(s) "
                f"(threads from {self.source}; OpenMP wait policy {self.wait_policy})")


def cgroup_cores(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cfs_quota_us``), None when unlimited."""
    candidates = [(f"{root}/cpu.max", None),
                  (f"{root}/cpu/cpu.cfs_quota_us", f"{root}/cpu/cpu.cfs_period_us"),
                  (f"{root}/cpu,cpuacct/cpu.cfs_quota_us", f"{root}/cpu,cpuacct/cpu.cfs_period_us")]
    for quota_path, period_path in candidates:
        try:
            with open(quota_path) as f:
                text = f.read().split()
            if period_path is None:  # v2: "max 100000" or "200000 100000"
                quota, period = text[0], text[1]
            else:
                with open(period_path) as f:
                    quota, period = text[0], f.read().split()[0]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            q, p = float(quota), float(period)
        except ValueError:
            continue
        if q > 0 and p > 0:
            return q / p
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def local_processes() -> int:
    """Processes sharing this node's cores: torchrun/accelerate's ``LOCAL_WORLD_SIZE`` (1 outside them)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def _requested(threads: int | None) -> tuple[int | None, str]:
    if threads:
        return int(threads), "--threads"
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if name == "OMP_NUM_THREADS" and value and value == os.environ.get(_AUTO_MARK):
            continue  # set by an earlier apply() (here or in the parent process), not by the user
        if value:
            from vlens.errors import ConfigError

            # OpenMP's nested form "4,2" (4 threads, then 2 in each nested region): torch's count is the first
            first = value.split(",")[0].strip() if name == "OMP_NUM_THREADS" else value
            try:
                n = int(first)
            except ValueError:
                raise ConfigError(f"{name}={value!r}: write a whole number of threads, e.g. {name}=2") from None
            if n < 1:
                raise ConfigError(f"{name}={value!r}: at least 1 thread")
            return n, name
    return None, "auto"


def plan(threads: int | None = None, workers: int = 0, slots: int = 1, cores: int | None = None) -> CpuPlan:
    """The thread plan for this process; pure apart from reading the environment and the machine.

    ``threads``: the user's ``--threads`` (None or 0: decide). ``workers``: decode worker processes this process
    starts; they get one core each but never all of them (at most ``cores - 1``, so the model keeps one).
    ``slots``: concurrent requests (the web server), at most one per free core; 0 means as many as the thread
    count allows. Without an explicit count ``threads = (cores // local processes - workers) // slots``, at least
    1, so ``workers + slots * threads`` never exceeds the cores (an explicit count is honoured as given).
    """
    cores = cores or usable_cores()
    share = max(1, cores // local_processes())
    workers = max(0, min(int(workers), share - 1))
    wanted, source = _requested(threads)
    asked = None
    if wanted is not None:
        if wanted > share:  # torch would run them anyway, time-sliced on fewer cores: slower, and the plan a lie
            asked, wanted = wanted, share
        n = wanted
        slots = slots or max(1, (share - workers) // n)
    else:
        slots = min(slots, share - workers) if slots else share - workers  # at least one core per slot
        n = max(1, (share - workers) // max(1, slots))
    wait = os.environ.get("OMP_WAIT_POLICY", "PASSIVE" if "GOMP_SPINCOUNT" not in os.environ else "(GOMP_SPINCOUNT)")
    return CpuPlan(cores=cores, threads=n, workers=workers, slots=max(1, slots), wait_policy=wait, source=source,
                   asked=asked)


POLICY_OFF = ("off", "0", "false", "no", "torch")
POLICY_ON = ("", "on", "1", "true", "yes", "auto")


def disabled() -> bool:
    """``VLENS_CPU_POLICY=off``: leave torch's own defaults alone (for comparisons; not recommended). Anything
    but on/off (and their usual spellings) is a one-line ConfigError, never silently on."""
    value = os.environ.get("VLENS_CPU_POLICY", "").strip().lower()
    if value not in POLICY_OFF + POLICY_ON:
        from vlens.errors import ConfigError

        raise ConfigError(f"VLENS_CPU_POLICY={os.environ['VLENS_CPU_POLICY']!r}: write on (the default: vlens "
                          "plans threads and passive waiting) or off (torch's own defaults)")
    return value in POLICY_OFF


def apply(threads: int | None = None, workers: int = 0, slots: int = 1) -> CpuPlan:
    """Put the plan in force for this process and return it.

    Before torch loads it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a wait policy) and
    ``OMP_NUM_THREADS`` (read by torch, FAISS and the BLAS); after, it sets torch's and FAISS's thread counts
    directly (the wait policy can then no longer change: libgomp read it when torch loaded).
    """
    if disabled():  # torch's defaults, except a count the user typed (--threads) is still honoured
        import dataclasses

        p = plan(threads, workers, slots)
        if threads:
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(p.threads)
            else:
                os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(p.threads)
        return dataclasses.replace(p, threads=p.threads if threads else (
            sys.modules["torch"].get_num_threads() if "torch" in sys.modules else p.cores),
            wait_policy=os.environ.get("OMP_WAIT_POLICY", "libgomp default"), source="VLENS_CPU_POLICY=off")
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    p = plan(threads, workers, slots)
    if threads:  # the process's choice from now on: a later apply(workers=...) keeps it
        os.environ[THREADS_ENV] = str(p.threads)
    if "torch" not in sys.modules:
        if p.source != "OMP_NUM_THREADS" or p.asked is not None:  # the user's own list ("4,2") stays
            os.environ["OMP_NUM_THREADS"] = os.environ[_AUTO_MARK] = str(p.threads)
        os.environ["MKL_NUM_THREADS"] = str(p.threads)  # torch reads it too, and it wins
    else:
        import torch

        if torch.get_num_threads() != p.threads:
            torch.set_num_threads(p.threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(p.threads)
    return p
