"""The preview page: one annotated MJPEG stream per source (label, score, fps drawn), no external assets.

A source with a view (runtime/view.py) shows its whole frame with the region of interest boxed in magenta,
and the band names the rotation and flip the model's view has on top of that crop.

Frames are annotated and JPEG-encoded by the HTTP thread of each viewer, at most `MAX_FPS`, from the
newest classified frame the loop kept; with no viewer the loop pays nothing.
"""

from __future__ import annotations

import html

import numpy as np

MAX_FPS = 10.0
BOUNDARY = "edgecls-frame"
MIN_WIDTH = 320  # small camera frames are enlarged (nearest) so the text stays readable
TEXT = (0, 255, 0)  # BGR green on a black band
ROI = (255, 0, 255)  # BGR magenta: the region of interest the model sees, on the whole frame


def annotate(image: np.ndarray, result: dict, fps: float) -> np.ndarray:
    """A copy of the BGR frame with a band on top, `label score  fps` (and `rotate 90 flip horizontal` when the
    view has them), and the result's ROI boxed."""
    import cv2

    h, w = image.shape[:2]
    scale = max(1, -(-MIN_WIDTH // w))
    out = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) if scale > 1 else image.copy()
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    band = max(18, out.shape[0] // 12)
    cv2.rectangle(out, (0, 0), (out.shape[1], band), (0, 0, 0), -1)
    view = result.get("view") or {}
    text = f"{result.get('top1', '?')} {result.get('score', 0.0):.2f}  {fps:.1f} fps{_turned(view)}"
    cv2.putText(out, text, (4, band - 5), cv2.FONT_HERSHEY_SIMPLEX, band / 30, TEXT, 1, cv2.LINE_AA)
    if view.get("roi"):
        x, y, w, h = (v * scale for v in view["roi"])
        thick = max(2, out.shape[1] // 320)
        inset = thick // 2  # the whole line inside the region, so a box on the frame's edge is seen whole
        cv2.rectangle(out, (x + inset, y + inset), (x + w - 1 - inset, y + h - 1 - inset), ROI, thick)
    return out


def _turned(view: dict) -> str:
    """`  rotate 180 flip vertical` for the band, empty for an upright view."""
    words = ([f"rotate {view['rotate']}"] if view.get("rotate") else []) + (
        [f"flip {view['flip']}"] if view.get("flip", "none") != "none" else []
    )
    return "  " + " ".join(words) if words else ""


def jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def part(body: bytes, frame: int) -> bytes:
    """One multipart/x-mixed-replace part; X-Frame lets a client see that frames move on."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\nX-Frame: {frame}\r\n\r\n".encode()
        + body
        + b"\r\n"
    )


def page(names) -> bytes:
    """The HTML page: a figure per source, each an <img> on /stream/<index>."""
    figures = "\n".join(
        f'<figure><img src="/stream/{i}" alt="{html.escape(n)}"><figcaption>{html.escape(n)}</figcaption></figure>'
        for i, n in enumerate(names)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecls preview</title>
<style>body{{margin:0;padding:8px;background:#111;color:#ddd;font:14px sans-serif}}
figure{{display:inline-block;margin:4px}}img{{width:480px;background:#000;display:block}}
a{{color:#8cf}}</style></head>
<body><h1>edgecls</h1>
{figures}
<p><a href="/healthz">/healthz</a> <a href="/latest">/latest</a> <a href="/metrics">/metrics</a></p>
</body></html>
""".encode()


def sign_in_page(wrong: bool = False) -> bytes:
    """Shown instead of the preview when a token is required: POSTs the token to `/` (never in a URL), which
    answers with a session cookie."""
    note = "<p>That token is not the right one.</p>" if wrong else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecls preview: sign in</title>
<style>body{{margin:0;padding:16px;background:#111;color:#ddd;font:14px sans-serif}}</style></head>
<body><h1>edgecls</h1><p>This daemon requires its bearer token.</p>{note}
<form method="post" action="/"><input type="password" name="token" autocomplete="current-password" autofocus>
<button>Open preview</button></form>
</body></html>
""".encode()
