"""edgecls.runtime.sources: how a Source stops; failures reach read(), close() wakes readers, read(timeout=) holds."""

import logging
import threading
import time

import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.sources import RetryPolicy, Source, SourceClosed, SourceEnded, SourceFailed, SourceTimeout
from tests.daemon_helpers import write_test_video
from tests.mjpeg_server import MjpegServer


@pytest.fixture
def video(tmp_path):
    """A 20-frame, 20 fps MJPG AVI of its own, so a test may delete it."""
    return write_test_video(tmp_path / "clip.avi", pattern="ramp")


class _BlockedReader:
    """read() in another thread, as a daemon's classify loop does; records what ended it and when."""

    def __init__(self, source, timeout):
        self.error, self.ended_at = None, None
        self._thread = threading.Thread(target=self._read, args=(source, timeout), daemon=True)
        self._thread.start()

    def _read(self, source, timeout):
        try:
            while True:  # frames still in flight are fine; we care about how the wait ends
                source.read(timeout=timeout)
        except Exception as exc:
            self.error, self.ended_at = exc, time.monotonic()

    def join(self, timeout):
        self._thread.join(timeout)
        return not self._thread.is_alive()


class _CountWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


# ---------------------------------------------------------------------------------------------- p4


def test_loop_reopen_that_fails_puts_the_source_in_failed_with_the_reason(video):
    source = Source(video, loop=True, every_frame=True, timeout_s=5)
    video.unlink()  # the open capture keeps reading; the reopen for the second pass cannot
    try:
        start = time.monotonic()
        frames = 0
        with pytest.raises(SourceFailed, match="cannot open source"):
            while True:
                source.read(timeout=5)
                frames += 1
        assert frames == 20 and time.monotonic() - start < 3.0  # promptly, not after the 5 s read timeout
        assert source.stats.state == "failed" and "cannot open source" in source.stats.last_error
        with pytest.raises(SourceFailed):  # and it stays failed
            source.read(timeout=2)
        source._thread.join(1)
        assert not source._thread.is_alive()
    finally:
        source.close()


def test_folder_of_undecodable_images_fails_clearly_instead_of_spinning(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.jpg").write_bytes(b"not a jpeg")
    warnings = _CountWarnings()
    logger = logging.getLogger("edgecls.runtime")
    logger.addHandler(warnings)
    cpu_start, start = time.process_time(), time.monotonic()
    try:
        source = Source(tmp_path, loop=True, timeout_s=5)
        with pytest.raises(SourceFailed, match="no decodable image"):
            source.read()
        assert time.monotonic() - start < 3.0  # promptly, not after the 5 s read timeout
        time.sleep(2.0)  # a spinning capture thread would burn a core here
        cpu = time.process_time() - cpu_start
        source.close()
    finally:
        logger.removeHandler(warnings)
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 2 s"  # a spinning thread burns ~2 s
    assert warnings.count == 20  # one per bad file, one pass
    assert source.stats.state == "failed"


# ---------------------------------------------------------------------------------------------- p5


def test_close_wakes_a_blocked_reader_at_once_and_joins_the_thread(video):
    source = Source(video, fps=0.1)  # the second frame is due in 10 s
    source.read(timeout=2)
    reader = _BlockedReader(source, timeout=5)
    time.sleep(0.3)
    closing = time.monotonic()
    source.close()
    close_s = time.monotonic() - closing
    assert reader.join(2), "reader still blocked 2 s after close()"
    assert isinstance(reader.error, SourceClosed) and isinstance(reader.error, SourceEnded)
    assert reader.ended_at - closing < 1.0  # at once, not at its 5 s read timeout (slack for a loaded CI)
    assert close_s < 1.5 and not source._thread.is_alive()  # the thread woke, not a 2 s join timeout
    assert source.stats.state == "closed"
    with pytest.raises(SourceClosed):
        source.read(timeout=5)
    assert list(source) == []  # iteration stops on a closed source, as at the end of a file


def test_close_wakes_a_reader_of_a_stalled_stream(tmp_path):
    server = MjpegServer(fps=25, stall_after=3).start()  # a hung camera: connected, sends nothing more
    source = Source(server.url, timeout_s=3, retry=RetryPolicy(first_delay=0.2, max_delay=0.5))
    try:
        reader = _BlockedReader(source, timeout=5)
        time.sleep(0.5)  # the capture thread now sits in a native read that lasts up to timeout_s
        closing = time.monotonic()
        source.close(join_timeout=0.5)
        assert time.monotonic() - closing < 1.5  # close() never waits past join_timeout, nor the 3 s native read
        assert reader.join(2), "reader still blocked after close()"
        assert isinstance(reader.error, SourceClosed)
        assert reader.ended_at - closing < 1.0  # at once, not at its 5 s read timeout
        assert source.stats.state == "closed"
    finally:
        server.kill()  # drops the connection: the native read returns and the thread releases the capture
    source._thread.join(3)
    assert not source._thread.is_alive() and source.stats.state == "closed"


# ---------------------------------------------------------------------------------------------- p14


def test_read_returns_an_available_frame_at_once(video):
    with Source(video, fps=0.1) as source:
        deadline = time.monotonic() + 2
        while source.stats.frames < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        frame = source.read(timeout=0)
        assert frame.index == 0 and time.monotonic() - start < 0.5  # not the next frame, 10 s away
    with Source(video, fps=4) as source:
        source.read(timeout=2)
        start = time.monotonic()
        frame = source.read(timeout=5)  # the next frame arrives ~0.25 s later: returned then, not at the timeout
        assert frame.index == 1 and 0.1 < time.monotonic() - start < 1.5


@pytest.mark.parametrize("timeout", [0.05, 0.3, 0.8, None])
def test_read_times_out_after_the_given_timeout_never_later(video, timeout):
    with Source(video, fps=0.1, timeout_s=0.4) as source:  # one frame, then none for 10 s
        source.read(timeout=2)
        expected = 0.4 if timeout is None else timeout
        start = time.monotonic()
        with pytest.raises(SourceTimeout, match=f"no frame for {expected:.1f}s"):
            source.read(timeout=timeout)
        elapsed = time.monotonic() - start
    # Never later; the slack (0.3 s, for a loaded CI) keeps 0.05 s apart from the 0.4 s of a read ignoring `timeout`.
    assert expected - 0.01 <= elapsed < expected + 0.3, elapsed


def test_close_waits_at_most_two_seconds_for_a_capture_stuck_in_a_native_read():
    from edgecls.runtime.sources import Source, SourceTimeout
    from tests.mjpeg_server import MjpegServer

    server = MjpegServer(fps=25, stall_after=3).start()  # then connected and silent: OpenCV's read blocks
    source = Source(server.url, timeout_s=10.0)  # the native read would end only after 10 s
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                source.read(timeout=0.5)
            except SourceTimeout:
                break  # frames stopped: the capture thread now sits in the blocked read
        time.sleep(0.3)
        start = time.monotonic()
        source.close()
        took = time.monotonic() - start
        assert 1.9 <= took < 2.9, took  # the documented default join_timeout, 2 s (3 s would be a bug)
    finally:
        server.kill()
