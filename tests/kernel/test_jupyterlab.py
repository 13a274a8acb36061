"""JupyterLab in a real (headless) Chromium, driven by Playwright, on the MPI kernel.

Starts JupyterLab on loopback with a token, a temporary root dir holding copies of
the notebooks and the MPI kernelspec in a temporary prefix; runs all cells of
quickstart.ipynb and errors-and-interrupts.ipynb and checks what the page shows.
Screenshots go to test-artifacts/ (ignored by git).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kernel_helpers import install_kernelspec, process_tree, wait_gone

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook on show
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

playwright = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("prefix")
    jupyter_path = os.environ.get("JUPYTER_PATH")  # restored after: nbval's "mpi" comes later
    install_kernelspec(prefix, name="mpi")        # the notebooks ask for the kernel "mpi"
    install_kernelspec(prefix, name="mpi64", ranks=64)
    root = tmp_path_factory.mktemp("root")
    for name in ("quickstart.ipynb", "errors-and-interrupts.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, root / name)
    (root / "many-ranks.ipynb").write_text(json.dumps(notebook("mpi64", MANY_RANKS_CELLS)))
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", root / "deaths.ipynb")  # a kernel of its own
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path_factory.mktemp("logs") / "jupyterlab.log", "w+")
    config = tmp_path_factory.mktemp("config")
    (config / "labconfig").mkdir()
    (config / "labconfig" / "page_config.json").write_text(  # no "news?" pop-up over the page
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("runtime"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.allow_root=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                log.seek(0)
                pytest.fail(f"JupyterLab did not start:\n{log.read()[-3000:]}")
            time.sleep(0.3)
    yield base, token
    if jupyter_path is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = jupyter_path
    pids = process_tree(server.pid)
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    assert not wait_gone(pids, 10), "JupyterLab left kernel processes behind"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=FLAGS, viewport={"width": 1280, "height": 1000})
        yield context
        context.close()


MANY_RANKS_CELLS = [
    "%mpi_monitor",
    "%%px --noblock --targets ::5\nimport time\ntime.sleep(8)",
    "%mpi_status",
    "%%px --targets 1::5\nprint('done')",
]


def notebook(kernel: str, cells: list[str]) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": source,
                       "outputs": [], "execution_count": None} for i, source in enumerate(cells)]}


def open_notebook(browser, lab, name: str, ranks: int = 4):
    base, token = lab
    page = browser.new_page()
    workspace = name.split(".")[0]  # a fresh workspace per notebook: nothing else open
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}")
    page.wait_for_selector(f"{NB} .jp-Cell", timeout=60_000)
    # the kernel named in the notebook's metadata is the MPI one
    page.wait_for_selector(f".jp-Toolbar-kernelName:has-text('MPI, {ranks} ranks')", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    return page


def run_all(page) -> None:
    page.click(NB)
    page.keyboard.press("Escape")
    page.click("text=Run", timeout=10_000)
    page.click("text=Run All Cells", timeout=10_000)
    page.wait_for_timeout(500)
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{NB} .jp-CodeCell .jp-InputPrompt')]"
        ".every(p => /\\[\\d+\\]/.test(p.textContent))", timeout=120_000)


def add_cell(page, code: str) -> int:
    """Type `code` into a new cell at the end and run it; return the cell's index."""
    cells = page.locator(f"{NB} .jp-CodeCell").count()
    page.click(f"{NB} .jp-Cell:last-child .jp-InputPrompt")
    page.click(".jp-NotebookPanel:not(.lm-mod-hidden) [data-command='notebook:insert-cell-below']")
    page.wait_for_function(f"() => document.querySelectorAll('{NB} .jp-CodeCell').length === {cells + 1}")
    page.keyboard.press("Enter")  # edit the new, empty cell
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    return cells


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_quickstart_runs_with_per_rank_outputs(browser, lab):
    page = open_notebook(browser, lab, "quickstart.ipynb")
    run_all(page)
    shot(page, "quickstart")
    text = page.inner_text(NB)
    for rank in range(3):
        assert f"[stdout:{rank}] hello from server {rank} of 3" in text
    assert "Out[2:" in text and "'rank 2 here'" in text
    assert "pushed greeting, factor to ranks 0-2" in text
    assert "{0: 'hi x10: 60.0', 1: 'hi x10: 61.0', 2: 'hi x10: 62.0'}" in text
    assert "Error" not in page.inner_text(f"{NB} .jp-OutputArea")
    page.close()


def test_errors_merged_and_monitor_turns_busy_then_idle(browser, lab):
    page = open_notebook(browser, lab, "errors-and-interrupts.ipynb")
    run_all(page)
    text = page.inner_text(NB)
    assert "[0-2:execute]: ZeroDivisionError on ranks 0-2" in text
    assert text.count("ZeroDivisionError: division by zero") == 1   # shown once for three ranks
    assert "[1:execute]: NameError on rank 1" in text and "[0,2:execute]: IndexError on ranks 0, 2" in text
    assert "--timeout 0.5 s expired; still busy: rank 1\n" in text
    monitor = ".mpi-monitor .mpi-server"
    all_idle = f"() => document.querySelectorAll(\"{monitor}[data-state='idle']\").length === 3"
    page.wait_for_function(all_idle, timeout=10_000)  # the view refreshes every 0.25 s
    # a new cell that keeps the servers busy for 3 s: watch the widget change
    cells = add_cell(page, "%%px\nimport time\ntime.sleep(3)")
    page.wait_for_selector(f"{monitor}[data-state='busy']", timeout=10_000)
    shot(page, "monitor-busy")
    assert page.locator(f"{monitor}[data-state='busy']").count() == 3
    page.wait_for_function(all_idle, timeout=20_000)
    new_cell = page.locator(f"{NB} .jp-CodeCell").nth(cells)
    assert "time.sleep(3)" in new_cell.inner_text()
    assert "Error" not in new_cell.inner_text()    # it ran cleanly, and was what kept them busy
    shot(page, "errors-and-monitor")
    page.close()


def test_a_dead_server_is_reported_in_the_cell_and_the_others_go_on(browser, lab):
    page = open_notebook(browser, lab, "deaths.ipynb")
    died = add_cell(page, "%%px --targets 1\nimport os\nos._exit(3)")
    page.wait_for_selector(f"{NB} .jp-OutputArea-output:has-text('MPIRankDied')", timeout=60_000)
    report = page.locator(f"{NB} .jp-CodeCell").nth(died).inner_text()
    assert "server rank 1 on" in report and "exited with code 3" in report, report
    assert "Only rank 1's variables are lost" in report, report
    shot(page, "death-report")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    after = add_cell(page, "%%px\nrank * 10")
    cell = page.locator(f"{NB} .jp-CodeCell").nth(after)
    cell.locator(".jp-OutputArea-output:has-text('Out[2:')").wait_for(timeout=60_000)
    assert "20" in cell.inner_text() and "Out[1:" not in cell.inner_text()
    shot(page, "after-death")
    page.close()


def test_the_monitor_and_output_stay_readable_at_64_ranks(browser, lab):
    page = open_notebook(browser, lab, "many-ranks.ipynb", ranks=64)
    run_all(page)
    monitor = ".mpi-monitor .mpi-grid .mpi-server"
    busy = f"() => document.querySelectorAll(\"{monitor}[data-state='busy']\").length === 13"
    page.wait_for_function(busy, timeout=20_000)
    assert page.locator(monitor).count() == 63       # one square per server, in a grid
    summary = page.inner_text(".mpi-monitor .mpi-summary")
    assert summary.startswith("50 idle, 13 busy (ranks 0, 5, 10, 15, 20, 25, 30, 35, ...: "), summary
    assert "rank 5 on " in page.get_attribute(f"{monitor}[data-rank='5']", "title")
    text = page.inner_text(NB)
    assert "50 idle, 13 busy" in text and "idle ranks not listed" in text   # %mpi_status
    assert "[stdout:1,6,11,16,21,26,31,36,41,46,51,56,61] done" in text   # one line for 13 ranks
    shot(page, "monitor-64-ranks")
    page.wait_for_function(f"() => document.querySelectorAll(\"{monitor}[data-state='idle']\").length === 63",
                           timeout=30_000)
    page.close()
