"""The ipyparallel-style user API over the command client: `Client`, its direct and
load-balanced views, `AsyncResult` and a concurrent.futures executor. Built on the
framework's public methods only (MPICommandClient's), never on its internals."""
