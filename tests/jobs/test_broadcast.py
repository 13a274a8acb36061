"""A big push travels by one MPI broadcast (mpi_kernel/broadcast.py): values, order, busy servers.

On one host "auto" sends directly (it is faster there), so these jobs ask for "always"; the
multi-host tests push across hosts with "auto"."""
from conftest import last_json


def test_a_big_push_reaches_every_target_by_broadcast_in_fifo_order(job):
    out = job("""
        import json
        import numpy as np
        c = MPICommandClient(broadcast="always")
        c.start_services()
        big = np.arange(2_000_000, dtype=np.float64)          # 16 MB: broadcast
        everyone = [0, 1, 2, 3]
        c.push_command_request("seen = []", True, everyone)
        c.push_command_request("seen.append(globals().get('a'))", False, everyone)
        c.push({"a": big})
        c.push_command_request("seen.append(float(a.sum()))", False, everyone)
        sums = [r["ret"] for r in c.push_command_request("seen", True, everyone)]
        c.push({"b": big[:1000], "a": big * 2}, [0, 1, 3])     # a subset: a communicator of its own
        sub = [r["ret"] for r in c.push_command_request("float(a.sum()), len(b)", True, [0, 1, 3])]
        staged = [r["ret"] for r in c.push_command_request(
            "len(__import__('mpi_kernel.framework.server').framework.server.MPICommandServer().broadcasts._staged)", True, everyone)]
        print(json.dumps([sums, sub, float(big.sum()), next(c._broadcasts._ids), staged]))
    """, n=5)
    sums, sub, total, next_id, staged = last_json(out)
    assert sums == [[None, total]] * 4
    assert sub == [[2 * total, 1000]] * 3
    assert next_id == 3 and staged == [0] * 4   # two broadcasts went out; nothing is left staged


def test_a_busy_server_gets_its_copy_while_it_works_and_does_not_hold_up_the_others(job):
    out = job("""
        import json, threading
        import numpy as np
        c = MPICommandClient(broadcast="always")
        c.start_services()
        busy = c.push_command_request("__import__('time').sleep(3) or 'slept'", False, 1)
        time.sleep(0.3)
        big = np.ones(4_000_000, dtype=np.uint8)
        t0 = time.monotonic()
        pusher = threading.Thread(target=c.push, args=({"a": big},), daemon=True)
        pusher.start()
        time.sleep(0.2)                        # the push is queued
        early = c.pull("a", [0, 2])            # queued behind the push on 0 and 2 only
        early_at = time.monotonic() - t0
        still_busy = c.get_server_status(1)["busy"]
        pusher.join()
        late = c.pull("a", [1])
        print(json.dumps([{r: int(v.sum()) for r, v in early.items()}, early_at, still_busy,
                          int(late[1].sum()), c.get_command_response(busy, True)[0]["ret"]]))
    """)
    early, early_at, still_busy, late, slept = last_json(out)
    assert early == {"0": 4_000_000, "2": 4_000_000} and still_busy and early_at < 2.0
    assert late == 4_000_000 and slept == "slept"


def test_an_unpicklable_value_fails_before_anything_is_sent(job):
    out = job("""
        import json, threading
        import numpy as np
        c = MPICommandClient()
        c.start_services()
        try:
            c.push({"a": np.ones(10**6), "lock": threading.Lock()})
        except TypeError as exc:
            error = str(exc)
        print(json.dumps([error, c.push_command_request("'a' in globals()", True, 0)[0]["ret"]]))
    """)
    error, defined = last_json(out)
    assert "cannot send '<push a, lock>' to the servers" in error and "lock" in error and defined is False


def test_auto_broadcasts_only_to_servers_on_other_hosts_and_only_when_it_saves_enough():
    from mpi_kernel.framework.broadcast import candidates, worthwhile

    def members(mode: str, servers: list, hosts: dict, client_host: str, nbytes: int) -> list:
        """The servers a push reaches by broadcast, decided as MPICommandClient.push does."""
        group = candidates(mode, servers, hosts, client_host)
        return group if worthwhile(mode, group, nbytes) else []

    hosts = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"}
    assert members("auto", list(hosts), hosts, "a", 100 << 20) == [2, 3, 4, 5]
    assert members("auto", list(hosts), hosts, "a", 1 << 20) == []        # 2 copies saved: 2 MB
    assert members("auto", [0, 1], hosts, "a", 100 << 20) == []           # all beside the client
    assert members("always", [0, 1], hosts, "a", 10) == [0, 1]
    assert members("never", list(hosts), hosts, "a", 100 << 20) == []
