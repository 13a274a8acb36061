"""A tour of the command client: `mpiexec -n 4 python -m mpi_kernel -m mpi_kernel.demo`."""
from __future__ import annotations

import pprint

from mpi_kernel import MPICommandClient


def main() -> None:
    client = MPICommandClient()
    client.start_services()
    servers = sorted(client.get_server_status())
    print(f"client ready; servers {servers}")

    print("\n# blocking eval on server 0 (guide 5.7, ex 2)")
    pprint.pprint(client.push_command_request("1+1", True, [0]))

    print("\n# non-blocking exec on every server, then fetch the responses")
    ids = client.push_command_request("x = rank ** 2", False, servers)
    print("request ids:", ids)
    client.get_command_response(ids, True)
    print("x per server:", client.pull("x"))

    print("\n# parameters dict, first available server")
    (response,) = client.push_command_request("a + b", True, None, {"a": 1, "b": 2})
    print(f"a + b = {response['ret']} on server {response['server']}")

    print("\n# a collective among the servers, on their own communicator `comm`")
    print([r["ret"] for r in client.push_command_request("comm.allreduce(rank)", True, servers)])

    print("\n# an error comes back as a traceback, and the server keeps serving")
    (response,) = client.push_command_request("1/0", True, 0)
    print(response["traceback"])
    client.stop_services()


if __name__ == "__main__":
    main()
