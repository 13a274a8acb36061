"""Turn benchmark results into rows (value, baseline, ratio, goal), Markdown and a plot."""
from __future__ import annotations

from pathlib import Path


def _row(what: str, ours: float, unit: str, baseline: float | None, base_label: str,
         ratio: float | None, goal: str, met: bool | None, p99: float | None = None) -> dict:
    return {"what": what, "ours": ours, "unit": unit, "baseline": baseline, "baseline_what": base_label,
            "ratio": ratio, "goal": goal, "met": met, "p99": p99}


def rows(results: dict) -> list[dict]:
    core, kernel = results["core"], results["kernel"]
    med = lambda key: core[key]["median_us"]  # noqa: E731
    out = [
        _row("eval round trip, 1 server", med("roundtrip"), "us", med("raw_pingpong"),
             "raw pickled ping-pong", med("roundtrip") / med("raw_pingpong"), "<= 3x",
             med("roundtrip") <= 3 * med("raw_pingpong"), core["roundtrip"]["p99_us"]),
    ]
    if "python_floor" in core:  # where a round trip's time goes (benchmark notes in the README)
        raw = med("raw_pingpong")
        out += [
            _row("round trip, bare Python loops on both sides (same waits)", med("python_floor"), "us", raw,
                 "raw pickled ping-pong", med("python_floor") / raw, "", None),
            _row("round trip, bare client loop and mpi-kernel's server", med("bare_client"), "us", raw,
                 "raw pickled ping-pong", med("bare_client") / raw, "", None),
            _row("round trip: Python bytecodes on the client", core["bytecodes"]["client"], "bytecodes",
                 None, "", None, "", None),
            _row("round trip: Python bytecodes on the server", core["bytecodes"]["server"], "bytecodes",
                 None, "", None, "", None),
        ]
    out += [
        _row("eval fan-out, 3 servers", med("fanout"), "us", med("raw_fanout"),
             "raw fan-out (yielding waits)", med("fanout") / med("raw_fanout"), "<= 3x",
             med("fanout") <= 3 * med("raw_fanout"), core["fanout"]["p99_us"]),
        _row("non-blocking throughput, 3 servers", core["throughput_per_s"], "commands/s", None, "",
             None, ">= 30000", core["throughput_per_s"] >= 30000),
    ]
    if "lb_map_per_s" in core:
        out.append(_row("load-balanced map of trivial tasks, 3 servers", core["lb_map_per_s"], "tasks/s",
                        None, "", None, ">= 30000", core["lb_map_per_s"] >= 30000))
    if "mixed_map" in core:
        mixed = core["mixed_map"]
        ratio = mixed["took_s"] / mixed["ideal_s"]
        out.append(_row("load-balanced map, 1% long tasks among quick ones", mixed["took_s"], "s",
                        mixed["ideal_s"], "ideal: work / servers, or the longest", ratio, "<= 1.1x",
                        ratio <= 1.1))
    for label in ("1MB", "100MB"):
        nbytes = core[f"bytes_{label}"]
        raw = nbytes / med(f"raw_send_{label}") / 1e3  # GB/s
        for target, factor in (("one", 1), ("all", 3)):
            ours = factor * nbytes / med(f"push_{label}_{target}") / 1e3
            goal = target == "one"
            out.append(_row(f"push {label} array to {target} server{'s' if factor > 1 else ''}", ours,
                            "GB/s", raw, "raw comm.Send to one server", ours / raw,
                            ">= 0.5x" if goal else "", (ours / raw >= 0.5) if goal else None))
        if f"raw_bcast_{label}" in core:  # the same array to all servers, by MPI_Bcast
            bcast, push = med(f"raw_bcast_{label}"), med(f"push_{label}_all")  # us
            out.append(_row(f"push {label} array to all servers vs raw comm.Bcast", nbytes / push / 1e3,
                            "GB/s", nbytes / bcast / 1e3, "raw comm.Bcast, same array", bcast / push,
                            ">= 0.5x", bcast / push >= 0.5))
            if f"push_{label}_all_bcast" in core:  # by broadcast even on one host, for comparison
                forced = med(f"push_{label}_all_bcast")
                out.append(_row(f"push {label} array to all servers by broadcast (always)", nbytes / forced / 1e3,
                                "GB/s", nbytes / bcast / 1e3, "raw comm.Bcast, same array", bcast / forced,
                                "", None))
    idle = max(core["idle_cpu_percent"])
    out.append(_row("idle CPU, busiest of 4 ranks", idle, "% of a core", None, "", None, "<= 1%", idle <= 1.0))
    ms = lambda d, key: d[key]["median_us"] / 1e3  # noqa: E731
    local, px, plain = ms(kernel, "cell_local"), ms(kernel, "cell_px"), ms(kernel["plain_ipykernel"], "cell")
    direct = kernel["unsupervised"]
    out += [
        _row("%%px 1+1 cell (3 servers)", px, "ms", plain, "plain ipykernel 1+1 cell", px / plain,
             "<= 1.3x", px <= 1.3 * plain, kernel["cell_px"]["p99_us"] / 1e3),
        _row("kernel-only 1+1 cell", local, "ms", plain, "plain ipykernel 1+1 cell", local / plain,
             "", None, kernel["cell_local"]["p99_us"] / 1e3),
        _row("1+1 cell through the supervisor's relay", local, "ms", ms(direct, "cell_local"),
             "same kernel, no relay", local / ms(direct, "cell_local"), "", None),
        _row("%%px 1+1 cell through the relay", px, "ms", ms(direct, "cell_px"),
             "same kernel, no relay", px / ms(direct, "cell_px"), "", None),
        _row("kernel start to ready (4 ranks)", kernel["kernel_start_s"], "s", None, "", None, "<= 1.5 s",
             kernel["kernel_start_s"] <= 1.5),
        _row("kernel restart", kernel["kernel_restart_s"], "s", None, "", None, "", None),
        _row("kernel shutdown", kernel["kernel_shutdown_s"], "s", None, "", None, "<= 2 s",
             kernel["kernel_shutdown_s"] <= 2.0),
        _row("interrupt of %%px while True (3 servers)", kernel["interrupt_s"], "s", None, "", None,
             "<= 1 s", kernel["interrupt_s"] <= 1.0),
    ]
    out += peer_rows(results)
    for row in results.get("scaling", []):
        if "error" in row:
            continue
        n = row["ranks"]
        note = " (oversubscribed)" if n > (results["machine"]["cores"] or 2) else ""
        out.append(_row(f"fan-out of 1+1 at {n} ranks{note}", row["fanout"]["median_us"], "us", None, "",
                        None, "", None, row["fanout"]["p99_us"]))
        out.append(_row(f"kernel start at {n} ranks{note}", row["kernel_start"], "s", None, "", None,
                        "<= 1.5 s", row["kernel_start"] <= 1.5))
        servers = n - 1
        if "client_cpu_us" in row:  # the client's CPU per server of one fan-out
            ours, raw = row["client_cpu_us"] / servers, row["raw_cpu_us"] / servers
            out.append(_row(f"client CPU per server, fan-out of 1+1 at {n} ranks", ours, "us", raw,
                            "raw mpi4py fan-out, same waits", ours / raw, "<= 10 us", ours <= 10))
            out.append(_row(f"client CPU per server without its waits at {n} ranks",
                            row["client_work_us"] / servers, "us", None, "", None, "", None))
        if "px_cell_cpu_us" in row:
            out.append(_row(f"kernel CPU per server, %%px 1+1 cell at {n} ranks", row["px_cell_cpu_us"] / servers,
                            "us", None, "", None, "", None))
    return out


def peer_rows(results: dict) -> list[dict]:
    """Ours against ipyparallel and mpi4py.futures (ratio < 1: mpi-kernel is faster)."""
    peers = results.get("peers")
    if not peers:
        return []
    core, kernel = results["core"], results["kernel"]
    out = []
    ipp, cell, fut = peers["ipyparallel"], peers["ipyparallel_cell"], peers["mpi4py_futures"]
    if "error" not in ipp:
        out += [
            _row("start: mpi-kernel kernel vs ipyparallel 3-engine cluster", kernel["kernel_start_s"], "s",
                 ipp["cluster_start_s"], "ipyparallel", kernel["kernel_start_s"] / ipp["cluster_start_s"],
                 "", None),
            _row("1+1 on one server vs ipyparallel apply_sync", core["roundtrip"]["median_us"], "us",
                 ipp["apply_one"]["median_us"], "ipyparallel",
                 core["roundtrip"]["median_us"] / ipp["apply_one"]["median_us"], "", None),
            _row("1+1 on all servers vs ipyparallel execute(block=True)", core["fanout"]["median_us"], "us",
                 ipp["execute_all"]["median_us"], "ipyparallel",
                 core["fanout"]["median_us"] / ipp["execute_all"]["median_us"], "", None),
        ]
    if "error" not in cell:
        ours, theirs = kernel["cell_px"]["median_us"] / 1e3, cell["cell_px"]["median_us"] / 1e3
        out.append(_row("%%px 1+1 cell vs ipyparallel's %px 1+1 cell", ours, "ms", theirs, "ipyparallel",
                        ours / theirs, "<= 0.5x", ours <= 0.5 * theirs))
    if "error" not in fut:
        out += [
            _row("1+1 round trip vs mpi4py.futures submit().result()", core["roundtrip"]["median_us"], "us",
                 fut["submit_result"]["median_us"], "mpi4py.futures",
                 core["roundtrip"]["median_us"] / fut["submit_result"]["median_us"], "", None),
            _row("throughput vs mpi4py.futures map (3 workers)", core["throughput_per_s"], "commands/s",
                 fut["map_per_s"], "mpi4py.futures", core["throughput_per_s"] / fut["map_per_s"], "", None),
        ]
        if "lb_map_per_s" in core:  # both chunksize 1
            ratio = core["lb_map_per_s"] / fut["map_per_s"]
            out.append(_row("load-balanced map vs mpi4py.futures map", core["lb_map_per_s"], "tasks/s",
                            fut["map_per_s"], "mpi4py.futures", ratio, ">= 5x", ratio >= 5))
    if "error" not in ipp and "lb_map_per_s" in ipp and "lb_map_per_s" in core:
        ratio = core["lb_map_per_s"] / ipp["lb_map_per_s"]
        out.append(_row("load-balanced map vs ipyparallel LoadBalancedView.map", core["lb_map_per_s"],
                        "tasks/s", ipp["lb_map_per_s"], "ipyparallel", ratio, ">= 20x", ratio >= 20))
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(results: dict, table: list[dict]) -> str:
    machine = results["machine"]
    lines = [f"Measured {results['date']} on {machine['cores']} cores ({machine['platform']}, "
             f"Python {machine['python']}, {results['core']['library'].strip()}, "
             f"{results['core']['ranks']} ranks){' - QUICK RUN, not for reading' if results['quick'] else ''}.",
             "Medians (p99 where the figure is a latency); ratios against a baseline measured in "
             "the same run.", "",
             "| measure | mpi-kernel | p99 | baseline | ratio | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        base = f"{_fmt(r['baseline'])} {r['unit']} ({r['baseline_what']})" if r["baseline"] is not None else ""
        met = {True: "yes", False: "**NO**", None: ""}[r["met"]]
        ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else ""
        p99 = f"{_fmt(r['p99'])} {r['unit']}" if r.get("p99") is not None else ""
        lines.append(f"| {r['what']} | {_fmt(r['ours'])} {r['unit']} | {p99} | {base} | {ratio} | {r['goal']} "
                     f"| {met} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, date: str, cores: int) -> None:
    """Bars of the ratios against their baselines, with the goal marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratios = [r for r in table if r["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(ratios) + 1.5))
    names = [r["what"] for r in ratios]
    values = [r["ratio"] for r in ratios]
    colors = ["#2e7d32" if r["met"] in (True, None) else "#c62828" for r in ratios]
    ax.barh(names, values, color=colors)
    for i, r in enumerate(ratios):
        if r["goal"].endswith("x"):  # a goal on the ratio (others are on the value)
            goal = float(r["goal"].strip("<=> x"))
            ax.plot([goal, goal], [i - 0.4, i + 0.4], color="black", lw=2)
        ax.text(r["ratio"], i, f" {r['ratio']:.3g}x", va="center")
    ax.set_xscale("log")  # peers are 100x away, the raw baselines 1-7x
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the baseline of the same run (log scale; black bar: goal)")
    ax.set_title(f"mpi-kernel vs its baselines and peers ({date[:10]}, {cores} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
