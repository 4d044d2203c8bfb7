"""edgecls.converters.quiet: fd 1 silenced for a block, and put back whatever order blocks of threads end in."""

import os
import threading

from edgecls.converters.quiet import quiet


def _fd1() -> tuple:
    info = os.fstat(1)
    return info.st_dev, info.st_ino


def test_quiet_blocks_of_two_threads_ending_out_of_order_give_stdout_back(capfd):
    before, devnull = _fd1(), os.stat(os.devnull)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with quiet():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with quiet():
            b_in.set()
            a_out.wait(10)
            seen["inside"] = _fd1()  # the first block has ended: still silenced while this one runs
            os.write(1, b"swallowed\n")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["inside"] == (devnull.st_dev, devnull.st_ino)
    assert _fd1() == before  # was /dev/null for the rest of the process
    os.write(1, b"after both\n")
    out = capfd.readouterr().out
    assert "after both" in out and "swallowed" not in out


def test_quiet_nested_blocks_restore_stdout_once_the_outer_one_ends(capfd):
    before = _fd1()
    with quiet():
        with quiet():
            os.write(1, b"inner\n")
        os.write(1, b"outer\n")
    assert _fd1() == before
    os.write(1, b"visible\n")
    assert capfd.readouterr().out == "visible\n"
