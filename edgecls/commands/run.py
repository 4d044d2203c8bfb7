"""`edgecls run`: classify frames from a camera, stream, video or folder."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--source", help="Camera index, /dev/videoN, csi://N, rtsp:// or http(s):// URL, GStreamer pipeline, "
              "video file, image or folder (default: the device profile's camera). Images and folders are offline "
              "inputs: every image is classified once, in order (unless --fps). Video files play at their own "
              "frame rate and frames inference cannot keep up with are dropped (unless --every-frame).")
@click.option("--device", "device", help="Device profile name or JSON file.")
@click.option("--artifact", help="Artifact to run (default: the device profile's first runnable one).")
@click.option("--threads", type=click.IntRange(1))
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--loop", is_flag=True, help="Repeat a video file or folder.")
@click.option("--every-frame", "--as-fast-as-possible", "every_frame", is_flag=True,
              help="Classify every frame of a video file as fast as inference goes (offline), instead of at its own "
              "frame rate.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True),
              help="Play a video file or folder as a live camera at this rate: the newest frame is classified and "
              "frames inference cannot keep up with are dropped (counted).")
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many classified frames.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for a frame before reporting a stall.")
def run(bundle, source, device, artifact, threads, top_k, loop, every_frame, fps, max_frames, timeout):
    """Classify frames from a camera, stream, video or folder; one JSON line per frame.

    Each line has the frame index, its age when classified, the top-k and the running drop count.
    Images and folders deliver every image, in order; video files play at their own frame rate
    (--every-frame: every frame, as fast as inference goes; --fps: a paced live stand-in).
    Stalls of a live source are reported and reading resumes when it comes back. Ctrl-C stops.
    """
    from devices import load_profile
    from runtime.classifier import Classifier
    from runtime.errors import EdgeclsError
    from runtime.sources import Source, SourceEnded, SourceTimeout, parse_source

    profile = load_profile(device)
    uri = source or profile.camera
    pacing = {}  # the source's defaults: every image of a folder, a video at its own frame rate
    if every_frame:
        pacing = {"every_frame": True}
    if fps is not None:
        if every_frame:
            raise EdgeclsError("--fps (paced, drops frames) and --every-frame (no drops) contradict: pick one")
        if parse_source(uri, profile.csi_pipeline).live:
            raise EdgeclsError(f"--fps paces a video file or folder; {uri} is live and sets its own rate: drop --fps")
        pacing = {"every_frame": False, "realtime": True, "fps": fps}
    classifier = Classifier(bundle, artifact=artifact, profile=profile, threads=threads, top_k=top_k)
    done = 0
    with Source(uri, loop=loop, timeout_s=timeout, profile=profile, **pacing) as src:
        while max_frames is None or done < max_frames:
            try:
                frame = src.read()
            except SourceEnded:
                break
            except SourceTimeout as exc:
                click.echo(json.dumps({"event": "stall", "detail": str(exc), "state": src.stats.state}), err=True)
                continue
            prediction = classifier.classify(frame.image, order="bgr")
            record = {"frame": frame.index, **({"name": frame.name} if frame.name else {}),
                      "age_ms": round(frame.age_ms, 1), **prediction.to_dict(), "dropped": src.stats.dropped}
            click.echo(json.dumps(record))
            done += 1
    stats = src.stats
    click.echo(json.dumps({"event": "stopped", "frames": done, "captured": stats.frames, "dropped": stats.dropped,
                           "outages": stats.outages, "reconnects": stats.reconnects, "state": stats.state}), err=True)
