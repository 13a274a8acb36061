"""The guide's test matrix (section 5.2 of the mpi4casa guide), on a real 4-rank job.

exec/eval x undefined/defined/multiple target x blocking/non-blocking x
string/dict parameters x success and six kinds of failure; each response has
every field checked.
"""
import json

import pytest

CASES = {
    # name: (command with string parameters, command using dict parameters, expected error)
    "success": ("1+2", "a+b", None),
    "ImportError": ("__import__('no_such_module_xyz')", "__import__(a)", "ModuleNotFoundError"),
    "NameError": ("undefined_name_xyz + 1", "a + undefined_name_xyz", "NameError"),
    "ZeroDivisionError": ("1/0", "a/0", "ZeroDivisionError"),
    "TypeError": ("1 + 'x'", "a + 'x'", "TypeError"),
    "IndexError": ("[][1]", "[a][5]", "IndexError"),
    "KeyError": ("{}['k']", "{a: 1}['k']", "KeyError"),
}

JOB = r"""
import json, itertools
c = MPICommandClient()
c.start_services()
error, cmd_str, cmd_dict = sys.argv[1], sys.argv[2], sys.argv[3]
expected_error = None if error == "success" else sys.argv[4]
params_for = {"success": {"a": 1, "b": 2}, "ImportError": {"a": "no_such_module_xyz"}}
checked = 0

def check(resp, command, mode, parameters, server_set, ret):
    global checked
    assert set(resp) == {"command", "id", "mode", "parameters", "ret", "server", "status",
                         "successful", "traceback", "command_start_time", "command_stop_time",
                         "stdout", "stderr"}, resp
    assert resp["command"] == command, resp
    assert resp["mode"] == mode, resp
    assert resp["parameters"] == parameters, resp
    assert resp["server"] in server_set, resp
    assert resp["status"] == "response received", resp
    assert resp["command_start_time"] <= resp["command_stop_time"], resp
    assert resp["stdout"] == "" and resp["stderr"] == "", resp
    if expected_error is None:
        assert resp["successful"] is True and resp["traceback"] is None, resp
        assert resp["ret"] == ret, resp
    else:
        assert resp["successful"] is False, resp
        assert resp["ret"] is None, resp
        assert resp["traceback"].startswith("Traceback (most recent call last)"), resp
        assert expected_error in resp["traceback"].splitlines()[-1], resp
        assert f'File "<server {resp["server"]}>", line 1' in resp["traceback"], resp
    checked += 1

for mode_kind, target, block, params in itertools.product(
        ["eval", "exec"], [None, 1, [0, 2]], [True, False], ["string", "dict"]):
    command = cmd_str if params == "string" else cmd_dict
    parameters = None if params == "string" else params_for.get(error, {"a": 1})
    if mode_kind == "exec":
        command = "result = " + command
    servers = [0, 1, 2] if target is None else ([target] if isinstance(target, int) else target)
    if block:
        responses = c.push_command_request(command, True, target, parameters)
    else:
        ids = c.push_command_request(command, False, target, parameters)
        assert isinstance(ids, list) and all(isinstance(i, int) for i in ids), ids
        early = c.get_command_response(ids, False, True)
        assert all(r["id"] in ids for r in early)
        responses = c.get_command_response(ids, True, True)
        assert [r["id"] for r in responses] == ids
    assert len(responses) == (1 if target is None else len(servers)), responses
    if target is not None:
        assert [r["server"] for r in responses] == servers, responses
    for resp in responses:
        check(resp, command, mode_kind, parameters, set(servers), 3 if mode_kind == "eval" else None)
    if mode_kind == "exec" and expected_error is None:
        # exec results persist in the namespace; dict parameters do not
        for resp in responses:
            (value,) = c.push_command_request("result", True, resp["server"])
            assert value["ret"] == 3, value
            leaked = c.push_command_request("'a' in globals() or 'b' in globals()", True, resp["server"])
            assert leaked[0]["ret"] is False, leaked
print(json.dumps({"checked": checked}))
"""


@pytest.mark.parametrize("error", list(CASES))
def test_guide_matrix(job, error):
    cmd_str, cmd_dict, expected = CASES[error]
    out = job(JOB, args=[error, cmd_str, cmd_dict, str(expected)])
    # 2 modes x (1 + 1 + 2 responses: any, one, two targets) x 2 blocking x 2 parameter kinds
    assert json.loads(out.strip().splitlines()[-1]) == {"checked": 2 * 4 * 2 * 2}
