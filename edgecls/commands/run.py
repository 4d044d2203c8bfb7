"""`edgecls run`: classify frames from a camera, stream, video or folder."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--source", help="Camera index, /dev/videoN, csi://N, rtsp:// or http(s):// URL, GStreamer pipeline, "
              "video file, image or folder (default: the device profile's camera).")
@click.option("--device", "device", help="Device profile name or JSON file.")
@click.option("--artifact", help="Artifact to run (default: the device profile's first runnable one).")
@click.option("--threads", type=click.IntRange(1))
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--loop", is_flag=True, help="Repeat a video file or folder.")
@click.option("--every-frame", "--as-fast-as-possible", "every_frame", is_flag=True,
              help="Read every frame of a file as fast as inference goes (offline), instead of at its own frame rate.")
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many classified frames.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for a frame before reporting a stall.")
def run(bundle, source, device, artifact, threads, top_k, loop, every_frame, max_frames, timeout):
    """Classify frames from a camera, stream, video or folder; one JSON line per frame.

    Each line has the frame index, its age when classified, the top-k and the running drop count.
    Stalls of a live source are reported and reading resumes when it comes back. Ctrl-C stops.
    """
    from devices import load_profile
    from runtime.classifier import Classifier
    from runtime.sources import Source, SourceEnded, SourceTimeout

    profile = load_profile(device)
    classifier = Classifier(bundle, artifact=artifact, profile=profile, threads=threads, top_k=top_k)
    done = 0
    with Source(source or profile.camera, loop=loop, every_frame=every_frame, timeout_s=timeout, profile=profile) as src:
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
