"""Code-reward throughput: our fork server in bubblewrap vs firejail per test vs a bare fork server.

One run prints tests/s and CPU ms per test for each way of running a test, and the ratios
the issue sets targets for:

- ours / firejail per test with the reference's flags (target >= 15x). The reference's
  ``--timeout`` adds ~2 s of wall time to every run, so it is measured too, but the ratio
  against firejail *without* ``--timeout`` is the one held to the target (the harder one).
- ours / a bare fork server without any isolation (the limit; target: within 1.5x).

Every way runs the same stdin program (parse a line, compute, print) through the same
number of parallel workers (one per core), and every output is checked, so a fast wrong
runner cannot win. Ours and the bare server alternate response by response inside each
worker, so that load from elsewhere on a shared machine falls on both alike. Peak memory (RSS) of the bench, a worker and a sandbox server is printed.

Run: ``PYTHONPATH=src python bench/rewards_code.py [--tests 3000]``. ``bench_code(n)`` returns
the figures as a dict for ``bench/rewards.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROGRAM = (
    "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(x * x for x in nums) % 1000003)\n"
)
TESTS_PER_PROBLEM = 16
#: The reference's firejail command (code-r1 ``firejail_exec``, used by Klear-Reasoner's code reward).
FIREJAIL_FLAGS = [
    "--private",
    "--quiet",
    "--seccomp=socket",
    "--profile=pip",
    "--rlimit-nproc=32",
    "--rlimit-nofile=32",
    "--rlimit-fsize=2097152",
    "--rlimit-as=4294967296",
]


def _problem(k: int) -> dict:
    """A stdin problem with ``TESTS_PER_PROBLEM`` tests and their true outputs."""
    inputs, outputs = [], []
    for t in range(TESTS_PER_PROBLEM):
        nums = [(k * 31 + t * 7 + i) % 1000 for i in range(50)]
        inputs.append(" ".join(map(str, nums)) + "\n")
        outputs.append(f"{sum(x * x for x in nums) % 1000003}\n")
    return {"inputs": inputs, "outputs": outputs}


def _process_tree(root_pid: int) -> dict[int, list[str]]:
    """``/proc/<pid>/stat`` fields of ``root_pid`` and all its descendants (the sandbox lives there)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        p = frontier.pop()
        for child, fields in stats.items():
            if int(fields[1]) == p and child not in tree:  # fields[1] is the parent pid
                tree.add(child)
                frontier.append(child)
    return {p: stats[p] for p in tree if p in stats}


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds of a process tree: each live process's own time plus its reaped children's."""
    tick = os.sysconf("SC_CLK_TCK")
    # After the ")" of the command: utime, stime, cutime, cstime are fields 11..14.
    return sum(sum(int(f) for f in fields[11:15]) for fields in _process_tree(root_pid).values()) / tick


def _tree_peak_rss_mb(root_pid: int) -> float:
    """Largest peak RSS (VmHWM) in the tree: the sandbox server, normally."""
    peak = 0
    for pid in _process_tree(root_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sandbox_worker(n_tests: int, barrier, queue) -> None:
    """One reward worker with two servers, ours and a bare one, alternating response by response.

    Interleaving at this grain means both see the same load from the rest of the machine
    (a shared machine's load swings over seconds), so their ratio is fair; each one's
    tests/s is its tests over the wall time spent in its own calls.
    """
    from klear.config import CodeRewardConfig, RewardConfig, SandboxConfig
    from klear.rewards.code import code_reward
    from klear.rewards.sandbox import close_all, get_sandbox

    cfgs = {
        mode: RewardConfig(code=CodeRewardConfig(max_tests=None), sandbox=SandboxConfig(mode=mode))
        for mode in WAYS
    }
    response = f"<think>.</think>\n```python\n{PROGRAM}```"
    problems = [_problem(k) for k in range(8)]
    boxes = {mode: get_sandbox(cfg.sandbox) for mode, cfg in cfgs.items()}
    for cfg in cfgs.values():  # start the servers outside the timed part
        warm = code_reward(response, problems[0], cfg)
        assert warm.score == 1.0, warm.detail
    stats = {mode: {"tests": 0, "passed": 0, "seconds": 0.0, "cpu_s": 0.0} for mode in WAYS}
    tree0 = {mode: _tree_cpu_s(box.pid) for mode, box in boxes.items()}
    barrier.wait()
    k = 0
    while stats[WAYS[0]]["tests"] < n_tests:
        order = WAYS if k % 2 == 0 else WAYS[::-1]
        for mode in order:
            c0, t0 = _self_cpu_s(), time.perf_counter()
            res = code_reward(response, problems[k % len(problems)], cfgs[mode])
            st = stats[mode]
            st["seconds"] += time.perf_counter() - t0
            st["cpu_s"] += _self_cpu_s() - c0
            st["tests"] += res.total
            st["passed"] += res.passed
        k += 1
    for mode, box in boxes.items():  # the server and every test child
        stats[mode]["cpu_s"] += _tree_cpu_s(box.pid) - tree0[mode]
        stats[mode]["server_mb"] = _tree_peak_rss_mb(box.pid)
    close_all()
    queue.put({"ways": stats, "worker_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


WAYS = ("bwrap", "none")


def _run_sandboxes(n_tests: int, workers: int) -> dict[str, dict]:
    ctx = mp.get_context("spawn")  # never fork the bench (or a trainer) to make a worker
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_sandbox_worker, args=(n_tests // workers, barrier, queue)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    out = {}
    for mode in WAYS:
        rs = [r["ways"][mode] for r in results]
        tests = sum(r["tests"] for r in rs)
        out[mode] = {
            "tests": tests,
            "passed": sum(r["passed"] for r in rs),
            "tests_per_s": sum(r["tests"] / r["seconds"] for r in rs),  # workers run in parallel
            "cpu_ms_per_test": 1000 * sum(r["cpu_s"] for r in rs) / tests,
            "worker_peak_mb": max(r["worker_mb"] for r in results),
            "server_peak_mb": max(r["server_mb"] for r in rs),
        }
    return out


def _run_firejail(n_tests: int, workers: int, timeout_flag: bool) -> dict:
    """The reference's way: a new firejail sandbox and interpreter for every test."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    cmd = ["firejail", *FIREJAIL_FLAGS]
    if timeout_flag:
        cmd.append("--timeout=00:00:06")
    cmd += [python, "-c", PROGRAM]
    cases = [(p["inputs"][t], p["outputs"][t]) for k in range(8) for p in [_problem(k)] for t in range(16)]

    def one(i: int) -> bool:
        stdin, expected = cases[i % len(cases)]
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
        return out.stdout.split() == expected.split()

    one(0)  # warm the page cache
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(one, range(n_tests)))
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "tests": n_tests,
        "passed": passed,
        "tests_per_s": n_tests / elapsed,
        "cpu_ms_per_test": 1000 * cpu / n_tests,
    }


def bench_code(n_tests: int = 3000, firejail_tests: int | None = None, workers: int | None = None) -> dict:
    """Measure every way of running tests; return the figures and ratios (None where not measured).

    n_tests: tests per fork-server way, over all workers; firejail_tests: tests
    for firejail without --timeout (default n_tests / 50); the --timeout variant runs
    two per worker (it sleeps ~2 s per test).
    """
    workers = workers or os.cpu_count() or 1
    out: dict = {"workers": workers, "program": "stdin: sum of squares of 50 ints"}
    ways = _run_sandboxes(n_tests, workers)
    out["ours"], out["bare"] = ways["bwrap"], ways["none"]
    # One worker alone: per-test latency, which contention from the rest of the machine
    # disturbs far less than throughput across workers.
    solo = _run_sandboxes(max(n_tests // 4, 16), 1)
    out["latency_ms"] = {
        "ours": 1000 / solo["bwrap"]["tests_per_s"],
        "bare": 1000 / solo["none"]["tests_per_s"],
    }
    if shutil.which("firejail"):
        n_fj = firejail_tests or max(4 * workers, n_tests // 50)  # ~100 ms of CPU each
        out["firejail"] = _run_firejail(n_fj, workers, timeout_flag=False)
        out["firejail_timeout"] = _run_firejail(2 * workers, workers, timeout_flag=True)
    else:
        out["firejail"] = out["firejail_timeout"] = None
        out["note"] = "firejail not installed (`apt-get install -y firejail`): firejail ratios skipped"
    ours = out["ours"]["tests_per_s"]
    out["ratio_vs_firejail"] = ours / out["firejail"]["tests_per_s"] if out["firejail"] else None
    out["ratio_vs_firejail_timeout"] = (
        ours / out["firejail_timeout"]["tests_per_s"] if out["firejail_timeout"] else None
    )
    out["bare_over_ours"] = out["bare"]["tests_per_s"] / ours
    out["cpu_ours_over_bare"] = out["ours"]["cpu_ms_per_test"] / out["bare"]["cpu_ms_per_test"]
    out["bench_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def print_code(fig: dict) -> None:
    print(f"code reward throughput, {fig['workers']} workers, {fig['program']}")
    rows = [("ours: fork server in bwrap", fig["ours"]), ("bare fork server, no isolation", fig["bare"])]
    rows += [("firejail per test (reference flags)", fig["firejail"])]
    rows += [("firejail per test + --timeout (reference)", fig["firejail_timeout"])]
    for name, r in rows:
        if r is None:
            print(f"  {name:44s} skipped")
            continue
        print(
            f"  {name:44s} {r['tests_per_s']:8.1f} tests/s  {r['cpu_ms_per_test']:7.1f} ms CPU/test"
            f"  ({r['passed']}/{r['tests']} correct)"
        )
    if fig["ratio_vs_firejail"] is not None:
        ok = "ok" if fig["ratio_vs_firejail"] >= 15 else "BELOW TARGET"
        print(f"  ours / firejail:            {fig['ratio_vs_firejail']:7.1f}x  (target >= 15x: {ok})")
        print(f"  ours / firejail --timeout:  {fig['ratio_vs_firejail_timeout']:7.1f}x")
    else:
        print(f"  {fig['note']}")
    ok = "ok" if fig["bare_over_ours"] <= 1.5 else "BELOW TARGET"
    print(f"  bare / ours:                {fig['bare_over_ours']:7.2f}x  (target <= 1.5x: {ok})")
    print(f"  CPU per test, ours / bare:  {fig['cpu_ours_over_bare']:7.2f}x  (the cost of isolation itself)")
    lat = fig["latency_ms"]
    print(
        f"  latency per test, 1 worker: ours {lat['ours']:.2f} ms, bare {lat['bare']:.2f} ms "
        f"({lat['ours'] / lat['bare']:.2f}x)"
    )
    print(
        f"  peak RSS: bench {fig['bench_peak_mb']:.0f} MB, worker {fig['ours']['worker_peak_mb']:.0f} MB, "
        f"sandbox server {fig['ours']['server_peak_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=3000, help="tests per fork-server way (all workers)")
    parser.add_argument("--firejail-tests", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    fig = bench_code(args.tests, args.firejail_tests, args.workers)
    print_code(fig)
    if args.json:
        print(json.dumps(fig, indent=2))


if __name__ == "__main__":
    main()
