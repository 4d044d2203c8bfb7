"""`edgecls label CAPTURES`: label captured frames in a browser, or through Label Studio (edgecls.labeling)."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples


@click.command(cls=OneLineErrors)
@click.argument("captures", type=click.Path(file_okay=False))
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8090, show_default=True, help="Port of the page (0: any free one)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; keep 127.0.0.1 unless you must.")
@click.option(
    "--bundle",
    type=click.Path(exists=True),
    default=None,
    help="Score every frame with this bundle (its top-k become the suggestions, its labels known classes) "
    "instead of the sidecars' scores.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File with the token the page requires (or set EDGECLS_RUN_TOKEN); without either a token is made "
    "and printed in the link.",
)
@click.option("--exit-when-done", is_flag=True, help="Stop once no frame is left to label (for scripts).")
@click.option(
    "--export",
    "export_format",
    type=click.Choice(["label-studio"]),
    default=None,
    help="Write Label Studio tasks (with the model's predictions) and a labelling config, instead of serving the page.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --export: the tasks .json to write (the config goes beside it as .xml).",
)
@click.option(
    "--image-prefix",
    default=None,
    help="With --export: URL prefix of CAPTURES in Label Studio (default: its local-files URL "
    "/data/local-files/?d=NAME/).",
)
@click.option(
    "--import",
    "import_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A Label Studio JSON export: move each annotated frame into its class folder.",
)
@examples(
    "edgecls label captures/   # open the printed link, press 1-9 to label, x to discard, u to undo",
    "edgecls label captures/ --bundle bundles/digits-v2 --port 8091",
    "edgecls label captures/ --export label-studio --out tasks.json",
    "edgecls label captures/ --import project-1-export.json",
)
def label(captures, port, host, bundle, token_file, exit_when_done, export_format, out, image_prefix, import_file):
    """Label the frames `edgecls run --capture CAPTURES` kept, most uncertain first.

    The page shows each frame with the model's top-k as suggestions on keys 1-9 (then the known classes),
    `x` discards, `n` names a new class, `u` or Ctrl-Z undoes. Every decision moves the image and its
    sidecar into CAPTURES/<class>/ (or CAPTURES/.discarded/; nothing is deleted), journaled in
    CAPTURES/.labels/, so a closed tab or a killed server loses nothing and the next start finishes a
    move a kill interrupted. `edgecls train --data CAPTURES` then reads the class folders.
    """
    from edgecls.labeling import LabelStore, export_tasks, import_export
    from edgecls.runtime.errors import EdgeclsError

    if export_format and import_file:
        raise EdgeclsError("give --export or --import, not both")
    if export_format and not out:
        raise EdgeclsError("--export label-studio needs --out tasks.json")
    if out and not export_format:
        raise EdgeclsError("--out is for --export label-studio: add it, or leave --out out")
    scorer, labels, model = None, [], {}
    if bundle:
        from edgecls.labeling.scores import bundle_scorer

        scorer, labels, model = bundle_scorer(bundle)
    progress = lambda line: click.echo(f"edgecls label: {line}", err=True)  # noqa: E731
    store = LabelStore(captures, scorer=scorer, labels=labels, progress=progress)
    for line in store.repairs:
        progress(line)
    if export_format:
        tasks, config, count = export_tasks(store, out, image_prefix, model.get("version", ""))
        click.echo(f"wrote {count} Label Studio tasks to {tasks} and its labelling config to {config}")
        return
    if import_file:
        counts = import_export(store, import_file)
        click.echo(
            f"moved {counts['moved']} frames into class folders of {captures}; {counts['gone']} were already "
            f"labelled; {counts['missing']} are not waiting in {captures} (tasks of another captures folder?)"
        )
        return
    from edgecls.labeling.session import serve

    left = serve(store, host, port, token_file, exit_when_done, lambda line: click.echo(line))
    click.echo(f"edgecls label: stopped, {left} frames left to label")
