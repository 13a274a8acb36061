"""The output of many ranks: merged lines, per-rank caps, the spill file, pacing (no MPI)."""
import time

from ipython_ext.cellout import CellOutput, LineMerger, Pacer, RankCap, Spill
from ipython_ext.display import StreamPrinter


def show(pieces):
    printer = StreamPrinter()
    return "".join(printer.label(ranks, name, text) for ranks, name, text in pieces)


def test_identical_lines_of_all_ranks_are_shown_once_as_soon_as_the_last_rank_gives_them():
    m = LineMerger(range(4))
    assert m.feed(0, "stdout", "step 1\n", 0.0) == []
    assert m.feed(1, "stdout", "step 1\nstep 2\n", 0.01) == []
    assert m.feed(2, "stdout", "step 1\n", 0.01) == []
    assert show(m.feed(3, "stdout", "step 1\n", 0.02)) == "[stdout:0-3] step 1\n"
    assert show(m.flush()) == "[stdout:1] step 2\n"


def test_lines_that_differ_are_grouped_by_text_in_rank_order():
    m = LineMerger(range(4))
    out = []
    for rank in (3, 1, 0, 2):
        out += m.feed(rank, "stdout", f"{'even' if rank % 2 == 0 else 'odd'}\n", 0.0)
    assert show(out) == "[stdout:0,2] even\n[stdout:1,3] odd\n"


def test_a_line_waits_for_the_other_ranks_only_for_the_window():
    m = LineMerger(range(3), window=0.2)
    assert m.feed(0, "stdout", "a\n", 0.0) == []
    assert m.due(0.1) == []
    assert show(m.due(0.25)) == "[stdout:0] a\n"
    # the same line from a late rank is shown by itself, not lost or held
    assert show(m.feed(1, "stdout", "a\n", 0.3)) == "[stdout:1] a\n"


def test_each_rank_keeps_its_order_when_a_later_group_is_complete_first():
    m = LineMerger(range(2), window=0.2)
    out = m.feed(0, "stdout", "x\ny\n", 0.0) + m.feed(1, "stdout", "z\n", 0.0)
    assert show(out) == "[stdout:0] x\n[stdout:1] z\n"  # group 0 complete; group 1 waits
    assert show(m.flush()) == "[stdout:0] y\n"


def test_unfinished_lines_and_progress_bars_go_out_alone_after_the_ranks_earlier_lines():
    m = LineMerger(range(2), window=0.2)
    assert m.feed(0, "stdout", "start\nname? ", 0.0) == []
    assert show(m.due(0.3)) == "[stdout:0] start\n[stdout:0] name? "
    assert show(m.feed(0, "stdout", "bob\n", 0.4)) == "[stdout:0] bob\n"  # its end, alone
    assert m.feed(1, "stdout", "\r 10%\r 20%\n", 0.5)[-1] == ((1,), "stdout", "\r 10%\r 20%\n")


def test_without_merging_every_rank_is_shown_by_itself_at_once():
    m = LineMerger(range(2), merge=False)
    assert m.feed(0, "stdout", "a\n", 0.0) == [((0,), "stdout", "a\n")]


def test_the_cap_shows_the_first_lines_of_each_rank_and_spills_the_rest(tmp_path):
    cap = RankCap(3, Spill(str(tmp_path), "px-1.txt"))
    assert cap.take(0, "stdout", "1\n2\n") == "1\n2\n"
    assert cap.take(0, "stdout", "3\n4\n5") == "3\n"
    assert cap.take(0, "stderr", "6\n") == ""
    assert cap.take(1, "stdout", "a\n") == "a\n"
    note = cap.note()
    cap.spill.close()
    assert "limited to 3 lines per rank: 2 more lines from rank 0 are in" in note and "px-1.txt" in note
    assert (tmp_path / "px-1.txt").read_text() == "[stdout:0] 4\n[stdout:0] 5\n[stderr:0] 6\n"  # 5 was unfinished
    assert RankCap(3, Spill(str(tmp_path), "px-2.txt")).note() == ""


def test_kept_output_is_merged_by_rank_for_no_stream_cells(tmp_path):
    out = CellOutput(range(3), live=False, merge=True, max_lines=0, spill=Spill(str(tmp_path), "x"))
    for rank in range(3):
        out.stream(rank, "stdout", "same\n", 0.0)
    out.stream(2, "stderr", "warn\n", 0.0)
    assert show(out.end("engine")) == "[stdout:0-1] same\n[stdout:2] same\n[stderr:2] warn\n"
    assert show(out.end("type")) == "[stdout:0-2] same\n[stderr:2] warn\n"


def test_many_ranks_printing_a_lot_show_only_their_capped_lines(tmp_path):
    out = CellOutput(range(64), live=True, merge=True, max_lines=1000, spill=Spill(str(tmp_path), "big"))
    shown = []
    for chunk in range(10):
        for rank in range(64):
            text = "".join(f"line {chunk * 1000 + i}\n" for i in range(1000))
            shown += out.stream(rank, "stdout", text, chunk * 0.01)
    shown += out.end("order")
    assert len(shown) == 1000 and all(ranks == tuple(range(64)) for ranks, _, _ in shown)
    assert "576,000 more lines from ranks 0-63" in out.close()


def test_the_pacer_lets_a_burst_through_then_holds_the_rate():
    pacer = Pacer(rate=1e6, burst=1e5)
    t0 = time.monotonic()
    pacer.take(100_000)
    assert time.monotonic() - t0 < 0.05
    pacer.take(100_000)  # 0.1 s worth at 1 MB/s
    assert time.monotonic() - t0 >= 0.09


def test_lines_ending_in_crlf_from_a_pty_still_merge():
    m = LineMerger(range(2))
    out = m.feed(0, "stdout", "hi\r\n", 0.0) + m.feed(1, "stdout", "hi\r\n", 0.0)
    assert out == [((0, 1), "stdout", "hi\r\n")]
