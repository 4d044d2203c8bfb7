"""The `edgecls` command: a thin layer over the Python API.

User-facing failures (EdgeclsError) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import os

import click

from edgecls.commands import (
    bench,
    compare,
    convert,
    devices,
    evaluate,
    explain,
    flash,
    fleet,
    import_,
    label,
    predict,
    rollback,
    run,
    search,
    service,
    sign,
    status,
    train,
    tune,
)
from edgecls.commands.quickstart import quickstart
from edgecls.runtime.errors import EdgeclsError


class _Group(click.Group):
    def invoke(self, ctx):
        from edgecls.runtime.daemon.nativelog import native_output_to_log

        try:
            # TensorFlow's, LiteRT's, OpenCV's and FFmpeg's C code write to fd 2 behind Python's back: their
            # lines become debug log lines (`--debug` shows them; crash explanations stay warnings).
            with native_output_to_log():
                return super().invoke(ctx)
        except EdgeclsError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:  # disk full, permission denied, ...: the environment, not a bug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecls")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log which backend, providers and artifact are used.")
@click.pass_context
def cli(ctx, debug, verbose):
    """Train image classifiers, convert them for edge devices, and run them without TensorFlow."""
    import logging

    ctx.obj = {"debug": debug}
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    runtime_log = logging.getLogger("edgecls")
    runtime_log.addHandler(handler)
    runtime_log.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    runtime_log.propagate = False
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ start-up chatter out
        # OpenCV's and FFmpeg's own warnings (a refused stream, a probe) would go raw to stderr; our sources
        # report the same events as states and log lines. --debug shows them.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


cli.add_command(train.train)
cli.add_command(evaluate.evaluate)
cli.add_command(convert.convert)
cli.add_command(import_.import_)
cli.add_command(predict.predict)
cli.add_command(run.run)
cli.add_command(devices.devices)
cli.add_command(service.service)
cli.add_command(flash.flash)
cli.add_command(sign.sign)
cli.add_command(rollback.rollback)
cli.add_command(status.status)
cli.add_command(fleet.fleet)
cli.add_command(bench.bench)
cli.add_command(explain.explain)
cli.add_command(tune.tune)
cli.add_command(search.search)
cli.add_command(quickstart)
cli.add_command(compare.compare)
cli.add_command(label.label)


def main(argv=None):
    cli.main(args=argv, prog_name="edgecls")


if __name__ == "__main__":
    main()
