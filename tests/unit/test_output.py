"""The server's output capture keeps a bounded copy for the response and streams it all (no MPI)."""
from mpi_kernel.framework.output import KEEP_CHARS, OutputCapture


def test_a_response_keeps_the_first_megabyte_of_a_stream_and_says_how_much_more_was_streamed():
    sent = []
    capture = OutputCapture(lambda request_id, name, text: sent.append((request_id, name, text)))
    capture.begin(7)
    line = "x" * 99 + "\n"
    for _ in range(2 * KEEP_CHARS // len(line)):
        capture.write("stdout", line)
    capture.write("stderr", "warning\n")
    out, err = capture.end()
    assert out.startswith(line) and len(out) < KEEP_CHARS + 200 and err == "warning\n"
    assert out.endswith(f"[mpi-kernel: {2 * KEEP_CHARS // 100 * 100 - KEEP_CHARS:,} more characters were "
                        f"streamed live but not kept in this response]\n")
    streamed = "".join(text for request_id, name, text in sent if name == "stdout" and request_id == 7)
    assert streamed == line * (2 * KEEP_CHARS // len(line))
    capture.begin(8)
    capture.write("stdout", "small\n")
    assert capture.end() == ("small\n", "")
