"""AsyncResult and RemoteError on given responses (no MPI)."""
import datetime

import pytest

from mpi_kernel.errors import RemoteError
from mpi_kernel.parallel.asyncresult import AsyncResult

TB = "Traceback (most recent call last):\n  File \"x\", line 1\nZeroDivisionError: division by zero\n"


def response(i, server, ret=None, tb=None, stderr=""):
    return {"id": i, "server": server, "ret": ret, "successful": tb is None, "traceback": tb,
            "stdout": f"out {i}\n", "stderr": stderr, "status": "response received",
            "command_start_time": 1e9 + i - 0.5, "command_stop_time": 1e9 + i}


def test_failures_are_merged_by_traceback_and_the_rest_is_kept(capsys):
    result = AsyncResult.done([response(1, 0, 10), response(2, 1, tb=TB), response(3, 2, tb=TB),
                               response(4, 0, tb="KeyError: 'k'\n")])
    with pytest.raises(RemoteError) as info:
        result.get()
    assert str(info.value).splitlines()[0] == "ZeroDivisionError in tasks 1-2 on ranks 1-2; KeyError in task 3 on rank 0"
    assert [i for i, _, _ in info.value.failures] == [1, 2, 3]
    values = result.get(return_exceptions=True)
    assert values[0] == 10 and all(isinstance(v, RemoteError) for v in values[1:])
    assert not result.successful() and result.ready() and result.progress == 4
    result.display_outputs()
    assert capsys.readouterr().out.splitlines()[:2] == ["[stdout:0] out 1", "[stdout:1] out 2"]


def test_get_dict_maps_ranks_to_values():
    result = AsyncResult.done([response(5, 2, 4), response(6, 0, 0)])
    assert result.get() == [4, 0] and result.get_dict() == {2: 4, 0: 0} and result.successful()
    assert AsyncResult(None, []).get() == []    # nothing to wait for


def test_len_iteration_indexing_and_metadata_as_ipyparallel_has_them():
    chunks = AsyncResult.done([response(1, 0, [1, 4]), response(2, 1, [9])], items=list)
    chunks._sizes = [2, 1]                            # a map's chunks: 3 items in 2 tasks
    assert len(chunks) == 3 and list(chunks) == [1, 4, 9] and chunks[1] == 4 and chunks[-2:] == [4, 9]
    assert chunks.engine_id == [0, 1] and chunks["engine_id"] == [0, 1] and chunks.status == ["ok", "ok"]
    assert chunks.metadata[0]["completed"] - chunks.metadata[0]["started"] == datetime.timedelta(seconds=0.5)
    assert chunks.stdout == ["out 1\n", "out 2\n"]
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        chunks.nonsense
    with pytest.raises(TypeError, match="int, slice or str"):
        chunks[1.5]


def test_iteration_raises_at_the_failed_task_after_yielding_those_before_it():
    result = AsyncResult.done([response(1, 0, 5), response(2, 1, tb=TB), response(3, 2, 7)])
    seen = []
    with pytest.raises(RemoteError, match="ZeroDivisionError in task 1 on rank 1"):
        for value in result:
            seen.append(value)
    assert seen == [5]


def test_a_single_result_is_one_value_and_not_iterable():
    one = AsyncResult(None, [8], single=True)
    one._responses, one._done_at = {8: response(8, 2, 42)}, 0.0
    assert one.get() == 42 and one.engine_id == 2 and one[0] == 42 and len(one) == 1
    with pytest.raises(TypeError, match="not iterable"):
        iter(one).__next__()


def test_unordered_results_come_in_the_order_the_tasks_ended():
    late, early = response(1, 0, ["late"]), response(2, 1, ["early"])
    late["command_stop_time"], early["command_stop_time"] = 20.0, 10.0
    result = AsyncResult(None, [1, 2], list, ordered=False)
    result._responses, result._done_at = {1: late, 2: early}, 0.0
    assert result.get() == ["early", "late"] and list(result) == ["early", "late"]


def test_display_outputs_groups_by_type_or_engine_and_skips_empty_streams(capsys):
    result = AsyncResult.done([response(1, 0, stderr="warn 1\n"), response(2, 1)])
    result.display_outputs("engine")
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["[stdout:0] out 1", "[stdout:1] out 2"]
    assert captured.err.splitlines() == ["[stderr:0] warn 1"]   # rank 1's empty stderr: no label
    result.display_outputs("type")
    assert capsys.readouterr().out.splitlines() == ["[stdout:0] out 1", "[stdout:1] out 2"]
    with pytest.raises(ValueError, match="groupby must be one of 'type', 'engine', 'order', not 'rank'"):
        result.display_outputs("rank")
