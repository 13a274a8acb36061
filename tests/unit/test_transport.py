"""transport.py pieces that need no MPI job (run in a subprocess: importing mpi4py.MPI
would make the test process an MPI singleton)."""
import pickle
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_deferred_sigint_semantics():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "deferred_sigint.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "still inside", "raised at exit: ok", "outside block: ok", "user handler called after block: True",
        "user handler outside: True", "check raised: ok", "ignored: ok"]


def test_encode_keeps_large_buffers_out_of_band():
    code = ("import pickle, numpy as np\nfrom mpi_kernel.framework import transport\n"
            "big, small = np.arange(100_000.0), np.arange(10.0)\n"
            "data, bufs = transport.encode({'big': big, 'small': small})\n"
            "assert len(bufs) == 1 and bufs[0].nbytes == big.nbytes, bufs\n"
            "header = pickle.loads(data)\nassert type(header) is transport.OutOfBand\n"
            "obj = pickle.loads(header[1], buffers=bufs)\n"
            "assert (obj['big'] == big).all() and (obj['small'] == small).all()\n"
            "data, bufs = transport.encode(('plain', 1))\nassert bufs == [] and pickle.loads(data) == ('plain', 1)\n"
            "def twice(x): return 2 * x\n"  # defined in __main__: must travel by value
            "data, bufs = transport.encode((twice, lambda y: y + 1))\nprint(data.hex())\n"
            "try:\n    transport.encode(__import__('threading').Lock())\n"
            "except Exception as exc:\n    print(type(exc).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data, error = proc.stdout.split()
    assert error == "TypeError"
    twice, inc = pickle.loads(bytes.fromhex(data))  # pytest's __main__ has no `twice`
    assert twice(4) == 8 and inc(1) == 2
