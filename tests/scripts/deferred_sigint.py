"""Checks of transport.DeferredSigint, run in a subprocess by test_transport.py."""
import os, signal, time
from mpi_kernel.framework import transport
# 1. deferred inside the block, raised at exit
try:
    with transport.DeferredSigint():
        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
        print("still inside")
    print("FAIL no interrupt")
except KeyboardInterrupt:
    print("raised at exit: ok")
# 2. outside a block: behaves like the default handler
try:
    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05); print("FAIL")
except KeyboardInterrupt:
    print("outside block: ok")
# 3. a user handler is chained
hits = []
signal.signal(signal.SIGINT, lambda s, f: hits.append(1))
with transport.DeferredSigint():
    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
    assert not hits
print("user handler called after block:", hits == [1])
os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
print("user handler outside:", hits == [1, 1])
# 4. check() raises mid-block
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    with transport.DeferredSigint() as d:
        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
        d.check()
        print("FAIL after check")
except KeyboardInterrupt:
    print("check raised: ok")
# 5. SIG_IGN is respected
signal.signal(signal.SIGINT, signal.SIG_IGN)
with transport.DeferredSigint():
    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
print("ignored: ok")
