"""Target parsing and magic argument errors, without MPI (a fake client records calls)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from ipython_ext.display import StreamPrinter
from mpi_kernel.errors import PxError
from ipython_ext.magics import MPIMagics, _split_line, assigned_names, status_table
from ipython_ext.targets import parse_targets

SERVERS = [0, 1, 2]


@pytest.mark.parametrize("spec, expected", [
    ("all", [0, 1, 2]), ("ALL", [0, 1, 2]), ("any", None), ("0", [0]), ("0,2", [0, 2]),
    ("1-2", [1, 2]), ("0, 2-2", [0, 2]), ("0-1,1", [0, 1]),
    ("::2", [0, 2]), ("1:3", [1, 2]), (":", [0, 1, 2]), ("-2:", [1, 2]), ("::-1", [2, 1, 0]),
    ("[0,2]", [0, 2]), ("[1]", [1]), ("-1", [2]), ("-3", [0]),
])
def test_parse_targets(spec, expected):
    assert parse_targets(spec, SERVERS) == expected


@pytest.mark.parametrize("spec, message", [
    ("3", "names ranks that are not servers: [3]; servers are 0-2"),
    ("-4", "there are only 3 servers"),
    ("5:", "selects no servers"),
    ("::0", "a slice step cannot be 0"),
    ("[0,", "bad target"),
    ("2-1", "the first rank must not exceed the last"),
    ("0;1", "use 'all', 'any'"),
    ("__import__('os').system('x')", "bad target"),
    ("", "bad target"),
    ("1.5", "bad target"),
])
def test_parse_targets_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_targets(spec, SERVERS)


class FakeClient:
    """Stands in for MPICommandClient: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list = []
        self.deaths: dict[int, str] = {}
        self.stream_callback = self.display_callback = None

    def servers(self) -> list[int]:
        return SERVERS

    def get_server_status(self, rank=None):
        one = {"rank": 0, "host": "h", "pid": 1, "state": "idle", "command": None, "elapsed": None}
        return one if rank is not None else {r: {**one, "rank": r} for r in SERVERS}

    def timed_out(self):
        return []

    def dead(self):
        return dict(self.deaths)

    def queued(self, ids):
        return {}

    def __getattr__(self, name):  # execute_cell, push, pull, ...: record and return nothing
        return lambda *args, **kwargs: self.sent.append((name, args, kwargs)) or []


@pytest.fixture(scope="module")
def magics():
    shell = InteractiveShell.instance()
    client = FakeClient()
    m = MPIMagics(shell, client)
    shell.register_magics(m)
    return m


@pytest.mark.parametrize("call, message", [
    (("px", "--targets 7", "1"), "servers are 0-2"),
    (("px", "--targets 0-x", "1"), "bad target '0-x'"),
    (("px", "--timeout 0", "1"), "--timeout must be a positive number"),
    (("px", "--timeout soon", "1"), "argument --timeout: invalid float value: 'soon'"),
    (("px", "--group-outputs bogus", "1"), "invalid choice: 'bogus'"),
    (("px", "--progress-after -1", "1"), "--progress-after must be a number of seconds"),
    (("pxconfig", "--targets 7", None), "servers are 0-2"),
    (("px", "--out 1x", "1"), "--out takes a variable name"),
    (("px", "--noblock --local", "1"), "--noblock and --local cannot be combined"),
    (("px", "", "   "), "%px needs code to run"),
    (("px", "stray words", "1"), "%%px takes options only"),
    (("mpi_push", "", None), "%mpi_push needs variable names"),
    (("mpi_push", "nope", None), "not defined on the client: nope"),
    (("mpi_push", "x --targets any", None), "needs definite targets"),
    (("mpi_pull", "x --targets 9", None), "servers are 0-2"),
    (("mpi_scatter", "", None), "the following arguments are required: name"),
    (("mpi_scatter", "nope", None), "not defined on the client: nope"),
    (("mpi_gather", "x --targets any", None), "%mpi_gather needs definite targets"),
    (("mpi_status", "extra", None), "unrecognized arguments: extra"),
    (("pxresult", "missing", None), "no pending %%px --noblock results named 'missing'"),
])
def test_magic_argument_errors_send_nothing(magics, call, message):
    name, line, cell = call
    magics.client.sent.clear()
    func = getattr(magics, name)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        func(line) if cell is None else func(line, cell)
    assert magics.client.sent == []


def test_split_line_keeps_the_statement_verbatim():
    assert _split_line('--targets 0-1 --noblock print("a  b", x)') == ("--targets 0-1 --noblock", 'print("a  b", x)')
    assert _split_line("x = -1") == ("", "x = -1")
    with pytest.raises(UsageError, match="--targets needs a value"):
        _split_line("--targets")


def test_assigned_names():
    source = "import numpy as np, os.path\nfrom math import pi as PI\na = 1\nb, (c, d) = 1, (2, 3)\n" \
             "for i in range(2): j = i\nx += 1\ndef f():\n    hidden = 1\nclass K: y = 2\nwith open(p) as fh: pass"
    assert assigned_names(source) == ["np", "os", "PI", "a", "b", "c", "d", "i", "j", "x", "f", "K", "fh"]


def test_status_table():
    table = status_table({0: {"host": "h", "pid": 7, "state": "busy", "command": "train()\nmore",
                              "elapsed": 2.25},
                          1: {"host": "h", "pid": 8, "state": "timeout", "command": None, "elapsed": None}})
    assert table.splitlines() == ["rank  host  pid  state    command      elapsed",
                                  "0     h     7    busy     train() ...  2.2 s",
                                  "1     h     8    timeout"]


def test_stream_labels_start_each_line_once():
    p = StreamPrinter()
    assert p.label(0, "stdout", "name? ") == "[stdout:0] name? "
    assert p.label(1, "stdout", "name? ") == "\n[stdout:1] name? "   # rank 0's line is ended first
    assert p.label(1, "stdout", "bob\nnext\n") == "bob\n[stdout:1] next\n"
    assert p.label(2, "stderr", "a\r\nb") == "[stderr:2] a\r\n[stderr:2] b"
    # A progress bar redrawing its line keeps its label, and another rank's does not overwrite it.
    assert p.label(0, "stdout", "\r 10%\r 20%") == "[stdout:0] \r[stdout:0]  10%\r[stdout:0]  20%"
    assert p.label(1, "stdout", "\r 10%") == "\n[stdout:1] \r[stdout:1]  10%"


def test_unbalanced_quotes_are_a_usage_error(magics):
    for name, line, cell in [("px", "--targets '0", "1"), ("mpi_pull", 'x "y', None),
                             ("mpi_push", "a --targets '1", None)]:
        with pytest.raises(UsageError, match="cannot read the options .*No closing quotation"):
            getattr(magics, name)(line) if cell is None else getattr(magics, name)(line, cell)


class InstantClient(FakeClient):
    """Every request answers at once, successfully and with no output."""

    def execute_cell(self, source, targets=None, want_value=False, local=False, keep_output=True):
        return [1]

    def wait(self, ids, timeout=None):
        return True

    def unanswered(self, ids):
        return {}

    def get_command_response(self, ids, block=False, verbose=True):
        return []

    def pull(self, names, targets=None):
        return {}


# Words the option strings are made of: every magic's flags, values good and bad, quotes.
_WORDS = ["--targets", "-t", "--timeout", "--noblock", "--block", "--local", "--group-outputs", "--out", "-o",
          "--stream", "--no-stream", "--progress-after", "--verbose", "--no-verbose", "--merge", "--no-merge",
          "--max-lines", "--all", "-5", "engine", "type", "::2", "[0,2]", "--",
          "-", "all", "any", "0", "1-2", "0,2", "9", "-1", "nan", "inf", "1e9", "rank", "order",
          "x", "'", '"', "\\", "=", "'a b'", "%", "\x00", "é"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["px", "px-cell", "mpi_push", "mpi_pull", "mpi_scatter", "mpi_gather",
                             "mpi_status", "pxresult", "pxconfig"]),
       words=st.lists(st.one_of(st.sampled_from(_WORDS), st.text(max_size=4)), max_size=6))
def test_fuzzed_magic_options_give_usage_errors_only(name, words):
    """Whatever the options, a magic either works or raises UsageError: no internal error."""
    shell = InteractiveShell.instance()
    shell.user_ns.update(x=[1, 2, 3], a=1)
    m = MPIMagics(shell, InstantClient())
    line = " ".join(words)
    try:
        if name == "px-cell":
            m.px(line, "1")
        else:
            getattr(m, name)(line)
    except (UsageError, PxError):  # PxError: the cell itself failed (a --local statement)
        pass


def test_the_monitor_summarises_256_ranks_in_one_line_and_a_grid_of_squares():
    from ipython_ext.live_monitor import render, summary
    status = {r: {"state": "idle", "host": "n1", "command": None, "elapsed": None} for r in range(256)}
    for r in (4, 17, 18, 19, 20, 21, 22, 23, 24, 25):
        status[r].update(state="busy", command="train()", elapsed=r / 10)
    status[99]["state"] = "timeout"
    assert summary(status) == "245 idle, 10 busy (ranks 4, 17-23, ...: 'train()', up to 2.5 s), 1 timeout"
    page = render(status)
    assert page.count('class="mpi-server mpi-busy"') == 10 and page.count("mpi-server") == 256 + 1
    assert 'title="rank 25 on n1: busy, train() (2 s)"' in page and len(page) < 40_000
    assert "rank 0: idle" in render({0: status[0]})   # a few ranks: labelled tiles


def test_a_dead_rank_is_left_out_of_all_refused_by_name_and_told_once(magics, capsys):
    magics.client.deaths = {1: "Only rank 1's variables are lost.\nMPIRankDied: server rank 1 killed\n"}
    try:
        with pytest.raises(UsageError, match=r"server 1 is dead \(server rank 1 killed\); choose other"):
            magics._targets("0-1")
        assert magics._targets("all") == [0, 2] and magics._targets("0,2") == [0, 2]
        magics._tell_deaths()
        magics._tell_deaths()
        magics.client.deaths = dict.fromkeys(SERVERS, "MPIRankDied: killed\n")
        with pytest.raises(UsageError, match="every server is dead: %mpi_restart_dead starts them anew"):
            magics._targets("all")
        err = capsys.readouterr().err
        assert err.count("MPIRankDied: server rank 1 killed") == 1 and "Only rank 1's" in err
    finally:
        magics.client.deaths = {}
