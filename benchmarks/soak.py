"""`python -m benchmarks.soak --minutes N [--seed S]`: a fault soak through a real kernel.

A seeded, reproducible random mix of what a notebook does and what goes wrong, driven
through jupyter_client as a notebook would: %%px cells, task-farm maps, push/pull,
non-blocking requests for any server with timeouts, Stop during a map, SIGKILL of a random
server in the middle of a map followed by %mpi_restart_dead, and SIGSTOP/SIGCONT of one
(past the monitor's timeout). Signals go to servers on this host only (one machine).

It counts and prints: requests lost or answered twice, cells that hung past their timeout,
unexpected errors, errors that do not name the rank, and after the shutdown the processes,
/dev/shm segments and /tmp folders left, with the kernel rank's descriptors and memory at
the start and end. Goal: all zero and memory flat. Writes benchmarks/results/soak.{json,md}
(or --out). Asserts nothing itself; tests/kernel/test_benchmarks_smoke.py runs a short one
and checks the counts.
"""
from __future__ import annotations

import argparse
import glob
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.kernel_helpers import alive, error_text, install_kernelspec, job_pids, start_kernel, text_of, wait_gone

HERE = Path(__file__).resolve().parent
NAME = "mpi-soak"
CELL_TIMEOUT = 60.0
SETUP = """\
import json, os, signal, time, resource
from mpi_kernel import Client
rc = Client()
client = rc.client
client.ping_interval, client.server_timeout = 0.25, 1.0
lview = rc.load_balanced_view()
def _task(x, pause=0.0):
    import time
    globals().setdefault("_ran", []).append(x)
    if pause:
        time.sleep(pause)
    return 2 * x
def _ran_twice():
    ran = [x for got in rc[:].apply_sync(lambda: globals().pop("_ran", [])) for x in got]
    return len(ran) - len(set(ran))
def _report(**counts):
    print("SOAK " + json.dumps(counts))
"""
PROBE = ("_report(fds=len(os.listdir('/proc/self/fd')), "
         "rss=int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 2**20, "
         "peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
         "pids=[s['pid'] for s in client.get_server_status().values()], "
         "records=len(client._book.requests), responses=len(client._book.responses), "
         "mpi=__import__('mpi4py.MPI').MPI.Get_library_version().splitlines()[0].strip(' \\x00'), "
         "kinds=__import__('collections').Counter(r['command'][:30] for r in client._book.requests.values()).most_common(3))")


class Soak:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counts = {"actions": 0, "lost": 0, "answered_twice": 0, "hung": 0, "unexpected_errors": 0,
                       "errors_without_rank": 0}
        self.by_action: dict[str, int] = {}
        self.examples: list[str] = []
        self.pids: set[int] = set()
        self.km: Any = None
        self.kc: Any = None

    # -- the kernel --------------------------------------------------------------------
    def start(self) -> None:
        self.km, self.kc = start_kernel(NAME)
        self.pids.update(job_pids(self.km)[1])
        self.cell(SETUP)

    def cell(self, code: str, timeout: float = CELL_TIMEOUT) -> tuple[str, list[dict], dict]:
        """Run a cell: (status, outputs, the SOAK report it printed, if any). A hang is
        counted, then the kernel interrupted (and restarted if that does not help)."""
        outputs: list[dict] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] in ("stream", "display_data", "update_display_data", "execute_result", "error"):
                outputs.append({"type": msg["msg_type"], **msg["content"]})
        try:
            reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout, stop_on_error=False)
        except TimeoutError:
            self.counts["hung"] += 1
            self.example(f"hung past {timeout:g} s: {code.splitlines()[0]}")
            self.recover()
            return "hung", outputs, {}
        report = {}
        for line in text_of(outputs).splitlines():
            if line.startswith("SOAK "):
                report = json.loads(line[5:])
        return reply["content"]["status"], outputs, report

    def recover(self) -> None:
        self.km.interrupt_kernel()
        try:
            self.kc.execute_interactive("1", timeout=20)
        except TimeoutError:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
            self.start()

    def probe(self) -> dict:
        report = self.cell(PROBE)[2]
        self.pids.update(report.get("pids", []))
        return report

    def count(self, what: str, n: int, action: str) -> None:
        if n:
            self.counts[what] += n
            self.example(f"{action}: {n} {what.replace('_', ' ')}")

    def example(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    def expect_ok(self, name: str, status: str, outputs: list[dict]) -> bool:
        if status == "ok":
            return True
        if status != "hung":
            self.counts["unexpected_errors"] += 1
            self.example(f"{name}: {error_text(outputs).strip().splitlines()[-1:]}")
        return False

    def check_errors_name_ranks(self, outputs: list[dict]) -> None:
        for o in outputs:
            if o["type"] == "error" and o.get("ename") != "KeyboardInterrupt":
                text = "\n".join(o.get("traceback", []))
                if not re.search(r"\brank", text):
                    self.counts["errors_without_rank"] += 1
                    self.example(f"error without a rank: {o.get('ename')}: {o.get('evalue')}")

    # -- the actions -------------------------------------------------------------------
    def px_cell(self) -> None:
        n = self.rng.randrange(1000)
        status, out, _ = self.cell(f"%%px\n_v = rank + {n}\nprint('px', rank, _v - rank)")
        if self.expect_ok("px cell", status, out):  # (rank in the text: identical lines merge)
            self.count("lost", 3 - len(re.findall(rf"px \d {n}\b", text_of(out))), "px cell")

    def map(self) -> None:
        size, pause = self.rng.choice([(30, 0.0), (400, 0.0), (60, 0.005), (12, 0.05)])
        long_one = self.rng.random() < 0.3  # a mix of quick tasks and one long one
        code = (f"_xs = list(range({size}))\n_ps = [{pause}] * {size}\n"
                + ("_ps[len(_ps) // 3] = 0.5\n" if long_one else "")
                + "_r = lview.map_sync(_task, _xs, _ps)\n"
                  "_report(lost=sum(a != 2 * x for a, x in zip(_r, _xs)) + len(_xs) - len(_r), twice=_ran_twice())")
        status, out, report = self.cell(code)
        if self.expect_ok("map", status, out):
            self.count("lost", report.get("lost", 0), f"map of {size}")
            self.count("answered_twice", report.get("twice", 0), f"map of {size}")

    def push_pull(self) -> None:
        n = self.rng.randrange(10**6)
        status, out, report = self.cell(f"rc[:].push({{'_p': {n}}})\n_report(lost=3 - rc[:].pull('_p').count({n}))")
        if self.expect_ok("push/pull", status, out):
            self.count("lost", report.get("lost", 0), "push/pull")

    def requests(self) -> None:
        n = self.rng.choice([3, 50, 500])
        code = (f"_ids = [client.push_command_request(f'{{i}} * 3', False, None)[0] for i in range({n})]\n"
                "_rs = client.get_command_response(_ids, True, timeout=30)\n"
                f"_report(lost={n} - sum(r['ret'] == i * 3 for i, r in enumerate(_rs)), twice=len(_ids) - len(set(_ids)))\n"
                "client.forget(_ids)")  # (the guide keeps every record unless told)
        status, out, report = self.cell(code)
        if self.expect_ok("requests", status, out):
            self.count("lost", report.get("lost", 0), f"{n} requests")
            self.count("answered_twice", report.get("twice", 0), f"{n} requests")

    def stop(self) -> None:
        """Stop during a map: the servers are idle within a second, and the kernel usable."""
        msg_id = self.kc.execute("_ar = lview.map_async(_task, range(3000), [0.002] * 3000)\n_ar.get()",
                                 stop_on_error=False)
        time.sleep(self.rng.uniform(0.3, 1.5))
        self.km.interrupt_kernel()
        deadline = time.monotonic() + CELL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                reply = self.kc.get_shell_msg(timeout=1)
            except Exception:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        else:
            self.counts["hung"] += 1
            self.example("Stop during a map: no reply")
            self.recover()
            return
        status, out, report = self.cell("time.sleep(1.0)\n_s = client.get_server_status()\n"
                                        "_report(busy=[r for r in _s if _s[r]['busy']], twice=_ran_twice())")
        if self.expect_ok("after Stop", status, out):
            if report.get("busy"):
                self.counts["unexpected_errors"] += 1
                self.example(f"servers {report['busy']} still busy 1 s after Stop")
            self.count("answered_twice", report.get("twice", 0), "after Stop")

    def kill(self) -> None:
        """SIGKILL a random server in the middle of a map: every task has its result or an
        error naming the dead rank, none ran twice; then %mpi_restart_dead."""
        victim = self.rng.randrange(3)
        code = (f"_ar = lview.map_async(_task, range(600), [0.001] * 600)\ntime.sleep({self.rng.uniform(0.05, 0.5):.3f})\n"
                f"os.kill(client.get_server_status({victim})['pid'], signal.SIGKILL)\n"
                "_r = _ar.get(timeout=30, return_exceptions=True)\n"
                "_bad = [str(r) for r in _r if not isinstance(r, int)]\n"
                "_deadline = time.time() + 10\n"
                f"while {victim} not in client.dead() and time.time() < _deadline:\n    time.sleep(0.05)\n"
                f"_report(lost=sum(not isinstance(r, int) and 'rank {victim}' not in str(r) for r in _r)"
                " + sum(isinstance(r, int) and r != 2 * x for x, r in enumerate(_r)),"
                f" unnamed=sum('rank' not in b for b in _bad), dead=list(client.dead()))")
        status, out, report = self.cell(code)
        if self.expect_ok("kill during a map", status, out):
            self.count("lost", report.get("lost", 0), "kill during a map")
            self.count("errors_without_rank", report.get("unnamed", 0), "kill during a map")
        status, out, _ = self.cell("%mpi_restart_dead")
        self.expect_ok("restart_dead", status, out)
        self.check_errors_name_ranks(out)
        status, out, report = self.cell("_report(twice=_ran_twice())")
        if self.expect_ok("after restart", status, out):
            self.count("answered_twice", report.get("twice", 0), "after restart")
        self.probe()

    def pause(self) -> None:
        """SIGSTOP one server past the monitor's timeout, then SIGCONT: cells work after."""
        victim = self.rng.randrange(3)
        status, out, _ = self.cell(f"_pid = client.get_server_status({victim})['pid']\n"
                                   f"os.kill(_pid, signal.SIGSTOP)\ntime.sleep({self.rng.uniform(0.3, 1.8):.2f})\n"
                                   "os.kill(_pid, signal.SIGCONT)\ntime.sleep(0.6)")
        self.expect_ok("SIGSTOP/SIGCONT", status, out)
        status, out, _ = self.cell("%%px\nprint('after pause', rank)")
        if self.expect_ok("px after pause", status, out):
            self.count("lost", 3 - text_of(out).count("after pause"), "px after pause")

    ACTIONS: list[tuple[str, float]] = [("px_cell", 4), ("map", 4), ("push_pull", 2), ("requests", 3),
                                        ("stop", 1), ("kill", 1), ("pause", 1)]

    def run(self, seconds: float) -> dict:
        self.start()
        first = self.probe()
        deadline = time.monotonic() + seconds
        names, weights = zip(*self.ACTIONS)
        while time.monotonic() < deadline:
            name = self.rng.choices(names, weights)[0]
            getattr(self, name)()
            self.counts["actions"] += 1
            self.by_action[name] = self.by_action.get(name, 0) + 1
        last = self.probe()
        return {"first": first, "last": last}


def leftovers(before: dict[str, set[str]], pids: set[int]) -> dict[str, Any]:
    now = snapshot()
    return {"processes": len(alive(sorted(pids))),
            "shm": sorted(now["shm"] - before["shm"]), "tmp": sorted(now["tmp"] - before["tmp"])}


def snapshot() -> dict[str, set[str]]:
    return {"shm": set(glob.glob("/dev/shm/mpich_shm_*")), "tmp": set(glob.glob("/tmp/mpi-kernel-*"))}


def markdown(result: dict) -> str:
    c, left = result["counts"], result["left"]
    rows = [("actions", c["actions"]), ("requests lost", c["lost"]), ("answered twice", c["answered_twice"]),
            ("cells hung past their timeout", c["hung"]), ("unexpected errors", c["unexpected_errors"]),
            ("errors that do not name the rank", c["errors_without_rank"]),
            ("processes left", left["processes"]), ("/dev/shm segments left", len(left["shm"])),
            ("/tmp folders left", len(left["tmp"])),
            ("kernel rank descriptors, start -> end", f"{result['first'].get('fds')} -> {result['last'].get('fds')}"),
            ("kernel rank RSS MB, start -> end (peak)",
             f"{result['first'].get('rss')} -> {result['last'].get('rss')} ({result['last'].get('peak')})")]
    lines = [f"# Fault soak: seed {result['seed']}, {result['minutes']:g} min, {result['mpi']}", "",
             "| what | count |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             "Actions: " + ", ".join(f"{k} {v}" for k, v in sorted(result["by_action"].items()))]
    if result["examples"]:
        lines += ["", "First problems seen:", *(f"- {e}" for e in result["examples"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    before = snapshot()
    with tempfile.TemporaryDirectory() as prefix:
        install_kernelspec(prefix, ranks=4, name=NAME, survive=True)
        soak = Soak(args.seed)
        started = time.monotonic()
        try:
            ends = soak.run(args.minutes * 60)
        finally:
            if soak.km is not None:
                pids = job_pids(soak.km)[1]
                soak.pids.update(pids)
                soak.kc.stop_channels()
                soak.km.shutdown_kernel(now=False)
                wait_gone(sorted(soak.pids), 10)
    # (The MPI is read in the kernel: MPI started here would make a segment of its own.)
    result = {"seed": args.seed, "minutes": args.minutes, "mpi": ends["last"].get("mpi", "?"),
              "seconds": round(time.monotonic() - started, 1), "counts": soak.counts, "by_action": soak.by_action,
              "examples": soak.examples, "left": leftovers(before, soak.pids), **ends}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "soak" if args.out == str(HERE / "results") else f"soak-{args.seed}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
