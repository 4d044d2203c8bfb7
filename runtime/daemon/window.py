"""`--show`: the annotated frames in a desktop window per source, when OpenCV was built with a GUI.

The pip wheel devices install (`opencv-python-headless`) has none, and on Linux OpenCV's GUI
aborts the whole process when no display is reachable; both are checked up front (a window is
tried in a child process) with a one-line error. HighGUI wants the thread that created the
window, so the daemon's main thread calls `update()` from its wait loop; q or Esc in a window
stops the daemon.
"""

from __future__ import annotations

import os
import sys

from edgecls.runtime.errors import EdgeclsError


def gui_backend() -> str | None:
    """OpenCV's GUI backend (GTK, QT, WIN32UI, COCOA, ...) or None for a headless build."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            value = value.strip()
            return None if value.upper() in ("", "NONE", "NO") else value
    return None


def check_can_show() -> None:
    if gui_backend() is None:
        raise EdgeclsError(
            "--show needs OpenCV with GUI support, and this OpenCV is a headless build: "
            "`pip install opencv-python` in place of opencv-python-headless, or watch the preview page "
            "(--port) instead"
        )
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise EdgeclsError(
            "--show needs a desktop session and DISPLAY is not set (a service or SSH login has none): "
            "use the preview page (--port), or `ssh -X` / run it on the device's desktop"
        )
    # A DISPLAY nobody serves (an ended `ssh -X`, a stale session) makes Qt abort the whole process at the
    # first window: try one in a child process first.
    import subprocess

    probe = "import cv2; cv2.namedWindow('edgecls-probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "this desktop"
        raise EdgeclsError(
            f"--show cannot open a window on {where}: no display answers; use the preview page "
            f"(--port) instead, or check the desktop session"
        )


class Window:
    """One window per source, refreshed with the newest classified frame, annotated like the preview."""

    def __init__(self, preview):
        check_can_show()
        self._preview = preview
        self._shown = {}

    def update(self) -> bool:
        """Draw what is new; False once the user pressed q or Esc (the daemon then stops)."""
        import cv2

        from edgecls.runtime.daemon.preview import annotate

        for index, name in enumerate(self._preview.names()):
            shown = self._preview.frame(index)
            if shown is None or self._shown.get(index) == shown[1]["frame"]:
                continue
            image, result, fps = shown
            cv2.imshow(f"edgecls: {name}", annotate(image, result, fps))
            self._shown[index] = result["frame"]
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        import cv2

        cv2.destroyAllWindows()
        cv2.waitKey(1)
