"""AsyncResult and RemoteError on given responses (no MPI)."""
import pytest

from mpi_kernel.errors import RemoteError
from mpi_kernel.parallel.asyncresult import AsyncResult

TB = "Traceback (most recent call last):\n  File \"x\", line 1\nZeroDivisionError: division by zero\n"


def response(i, server, ret=None, tb=None):
    return {"id": i, "server": server, "ret": ret, "successful": tb is None, "traceback": tb,
            "stdout": f"out {i}\n", "stderr": "", "status": "response received", "command_stop_time": i}


def test_failures_are_merged_by_traceback_and_the_rest_is_kept(capsys):
    result = AsyncResult.done([response(1, 0, 10), response(2, 1, tb=TB), response(3, 2, tb=TB),
                               response(4, 0, tb="KeyError: 'k'\n")], lambda values: values)
    with pytest.raises(RemoteError) as info:
        result.get()
    assert str(info.value).splitlines()[0] == "ZeroDivisionError in tasks 1-2 on ranks 1-2; KeyError in task 3 on rank 0"
    assert [i for i, _, _ in info.value.failures] == [1, 2, 3]
    values = result.get(return_exceptions=True)
    assert values[0] == 10 and all(isinstance(v, RemoteError) for v in values[1:])
    assert not result.successful() and result.ready() and result.progress == 4
    result.display_outputs()
    assert capsys.readouterr().out.splitlines()[:2] == ["[stdout:0:0] out 1", "[stdout:1:1] out 2"]


def test_get_dict_maps_ranks_to_values():
    result = AsyncResult.done([response(5, 2, 4), response(6, 0, 0)], lambda values: values)
    assert result.get() == [4, 0] and result.get_dict() == {2: 4, 0: 0} and result.successful()
    assert AsyncResult(None, [], list).get() == []    # nothing to wait for
