"""The CPU policy (src/vlens/cpu.py): cores this process may use, the thread plan, and that every entry point puts
it in force before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlens import cpu
from vlens.errors import ConfigError

POLICY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "VLENS_THREADS",
              "VLENS_CPU_POLICY", "VLENS_AUTO_OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in POLICY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("workers", [0, 1, 2, 4, 64])
@pytest.mark.parametrize("local", [1, 2, 3])
@pytest.mark.parametrize("slots", [1, 2, 0])
def test_workers_and_threads_never_exceed_the_cores(clean_env, cores, workers, local, slots):
    clean_env.setenv("LOCAL_WORLD_SIZE", str(local))
    p = cpu.plan(workers=workers, slots=slots, cores=cores)
    share = max(1, cores // local)
    assert p.threads >= 1
    assert p.workers + p.slots * p.threads <= max(share, 1 + p.workers)  # one thread is the floor
    if share > 1:
        assert p.workers + p.slots * p.threads <= share
        assert p.workers < share  # the model always keeps a core
    assert p.workers <= workers


def test_plan_by_hand(clean_env):
    assert cpu.plan(cores=2).threads == 2
    assert (cpu.plan(workers=2, cores=2).threads, cpu.plan(workers=2, cores=2).workers) == (1, 1)
    assert cpu.plan(workers=3, cores=8).threads == 5
    assert (cpu.plan(threads=1, slots=0, cores=4).slots, cpu.plan(threads=2, slots=0, cores=4).slots) == (4, 2)
    clean_env.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpu.plan(cores=16).threads == 4


def test_explicit_counts_win_in_order(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert (cpu.plan(cores=8).threads, cpu.plan(cores=8).source) == (3, "OMP_NUM_THREADS")
    clean_env.setenv("VLENS_THREADS", "5")
    assert (cpu.plan(cores=8).threads, cpu.plan(cores=8).source) == (5, "VLENS_THREADS")
    assert (cpu.plan(threads=7, cores=8).threads, cpu.plan(threads=7, cores=8).source) == (7, "--threads")
    for bad in ("abc", "0", "-2"):
        clean_env.setenv("VLENS_THREADS", bad)
        with pytest.raises(ConfigError, match="VLENS_THREADS"):
            cpu.plan()


def test_usable_cores_follow_affinity_and_the_cgroup_quota(clean_env):
    clean_env.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    clean_env.setattr(cpu, "cgroup_cores", lambda: None)
    assert cpu.usable_cores() == 6
    clean_env.setattr(cpu, "cgroup_cores", lambda: 2.5)
    assert cpu.usable_cores() == 3
    clean_env.setattr(cpu, "cgroup_cores", lambda: 0.2)
    assert cpu.usable_cores() == 1


@pytest.mark.parametrize("files,expect", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "250000 100000\n"}, 2.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({}, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path, files, expect):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu.cgroup_cores(str(tmp_path)) == expect


# A CLI process with an import hook that records the environment at the moment torch is first imported.
HOOK = r"""
import json, os, sys
seen = {}
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.update(wait=os.environ.get("OMP_WAIT_POLICY"), omp=os.environ.get("OMP_NUM_THREADS"))
        return None
sys.meta_path.insert(0, Hook())
from vlens.cli.main import main
rc = main(sys.argv[1:])
import torch
sys.stderr.write("\nPOLICY " + json.dumps({**seen, "rc": rc, "torch": torch.get_num_threads()}) + "\n")
"""


def _cli(args, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in POLICY_ENV}
    env.update(extra_env or {})
    r = subprocess.run([sys.executable, "-c", HOOK, *args], env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in r.stderr.splitlines() if x.startswith("POLICY ")]
    assert line, r.stderr[-2000:]
    return json.loads(line[-1][7:])


def test_cli_puts_the_policy_in_force_before_torch_loads(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.png")
    got = _cli(["caption", str(tmp_path / "a.png"), "--model", "builtin:blip-tiny", "--json"])
    assert got["rc"] == 0
    assert got["wait"] == "PASSIVE"
    assert got["omp"] == str(cpu.usable_cores()) and got["torch"] == cpu.usable_cores()
    got = _cli(["caption", str(tmp_path / "a.png"), "--model", "builtin:blip-tiny", "--json", "--threads", "1"])
    assert (got["rc"], got["wait"], got["torch"]) == (0, "PASSIVE", 1)
    got = _cli(["caption", str(tmp_path / "a.png"), "--model", "builtin:blip-tiny", "--json"],
               {"OMP_WAIT_POLICY": "ACTIVE", "VLENS_THREADS": "1"})
    assert (got["rc"], got["wait"], got["omp"], got["torch"]) == (0, "ACTIVE", "1", 1)  # the user's choice stays


def test_bad_vlens_threads_is_one_line_error():
    env = {k: v for k, v in os.environ.items() if k not in POLICY_ENV}
    r = subprocess.run([sys.executable, "-m", "vlens", "lab", "--help"], env={**env, "VLENS_THREADS": "many"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["error: VLENS_THREADS='many': write a whole number of threads, "
                                             "e.g. VLENS_THREADS=2"]


def test_every_heavy_command_takes_threads():
    import typer.main

    from vlens.cli.main import LIGHT_COMMANDS, app

    def leaves(cmd, path=""):
        subs = getattr(cmd, "commands", None)
        if not subs:
            yield path.strip(), cmd
            return
        for name, sub in subs.items():
            yield from leaves(sub, f"{path}{name} ")

    seen = 0
    for name, cmd in leaves(typer.main.get_command(app)):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        light = name in LIGHT_COMMANDS or name.split()[0] in LIGHT_COMMANDS
        assert ("--threads" in opts) != light, name
        seen += not light
    assert seen >= 20


def _ident(x):
    return x


def test_bulk_run_plans_workers_and_threads_then_restores(clean_env, monkeypatch):
    """The streaming pipeline asks the policy for its decode workers: on 2 usable cores 4 requested workers become
    1, the model keeps 1 thread, and the caller's thread count is back afterwards."""
    import torch

    from vlens import bulk

    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    seen, done = [], []
    real = bulk.decoded_batches

    def spy(items, steps, load, workers):
        seen.append(workers)
        return real(items, steps, load, 0)  # the count is what matters; no processes needed to check it

    monkeypatch.setattr(bulk, "decoded_batches", spy)
    before = torch.get_num_threads()

    def infer(batch):
        seen.append(torch.get_num_threads())
        return [d.position for d in batch]

    bulk.run_steps(bulk.Processes(), list(range(6)), 2, _ident, infer, done.extend, workers=4, progress=False)
    assert seen[0] == 1 and set(seen[1:]) == {1} and seen[0] + max(seen[1:]) <= 2
    assert [p for p, _ in done] == list(range(6)) and torch.get_num_threads() == before


def test_policy_off_leaves_torch_alone_but_honours_threads(clean_env):
    import torch

    clean_env.setenv("VLENS_CPU_POLICY", "off")
    before = torch.get_num_threads()
    assert cpu.apply().threads == before and "OMP_WAIT_POLICY" not in os.environ
    try:
        assert cpu.apply(threads=1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_more_threads_than_cores_are_lowered_with_a_note(clean_env):
    """Issue 29 item 9: --threads 999 on 2 cores planned 999 while torch ran 2: the plan says what runs."""
    p = cpu.plan(threads=999, cores=2)
    assert (p.threads, p.asked) == (2, 999) and "999" in p.note() and "running 2" in p.note()
    assert cpu.plan(threads=2, cores=2).note() == ""
    clean_env.setenv("VLENS_THREADS", "64")
    assert (cpu.plan(cores=4).threads, cpu.plan(cores=4).source) == (4, "VLENS_THREADS")


def test_openmp_nested_thread_lists_use_their_first_number(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "4,2")
    assert (cpu.plan(cores=8).threads, cpu.plan(cores=8).source) == (4, "OMP_NUM_THREADS")
    clean_env.setenv("OMP_NUM_THREADS", "4,x")
    assert cpu.plan(cores=8).threads == 4  # the nested levels are OpenMP's to read
    clean_env.setenv("OMP_NUM_THREADS", ",2")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        cpu.plan(cores=8)


@pytest.mark.parametrize("value,off", [("off", True), ("0", True), ("torch", True), ("on", False), ("", False),
                                       ("ON", False), ("1", False)])
def test_cpu_policy_switch_values(clean_env, value, off):
    clean_env.setenv("VLENS_CPU_POLICY", value)
    assert cpu.disabled() is off


def test_a_bogus_cpu_policy_is_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in POLICY_ENV}
    r = subprocess.run([sys.executable, "-m", "vlens", "lab", "--help"], env={**env, "VLENS_CPU_POLICY": "bogus"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: VLENS_CPU_POLICY='bogus'") and "on" in r.stderr and "off" in r.stderr


def test_cli_threads_above_the_cores_run_the_cores_and_say_so(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.png")
    got = _cli(["caption", str(tmp_path / "a.png"), "--model", "builtin:blip-tiny", "--json", "--threads", "999"])
    assert got["rc"] == 0 and got["torch"] == cpu.usable_cores()
    got = _cli(["caption", str(tmp_path / "a.png"), "--model", "builtin:blip-tiny", "--json"],
               {"OMP_NUM_THREADS": "1,1"})
    assert (got["rc"], got["torch"]) == (0, 1)
