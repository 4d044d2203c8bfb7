"""`edgecls search`: the most accurate model that meets a latency (RAM, size) budget, measured on the device."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples_block
from edgecls.runtime.errors import EdgeclsError
from edgecls.search.space import MODEL_COSTS

_MODELS = "; ".join(f"{name}: {cost}" for name, cost in MODEL_COSTS.items())  # small data: --models simple


def _numbers(kind, what: str):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            parsed = tuple(kind(v) for v in value.split(",") if v.strip())
        except ValueError:
            parsed = ()
        if not parsed:  # `--models ,` would otherwise widen to every default family
            raise click.BadParameter(f"{value!r}: give {what} separated by commas")
        return parsed

    return parse


@click.command(
    cls=OneLineErrors,
    help="Train, convert (int8, through the gate) and measure candidates on the device; keep the most accurate one "
    "within the budget. Candidates the latency model says cannot meet it are pruned before training. Resumes "
    "after a kill; the same command on several machines with a shared --out splits the trials. The chosen "
    "bundle is OUT/bundle: `edgecls flash OUT/bundle ...` takes it as it is."
    + examples_block(
        "edgecls search --data shapes --device desktop-cpu --max-latency-ms 2 --trials 12 --out search/shapes",
        "edgecls search --data photos --device pi@192.168.1.20 --profile raspberry-pi-4 --max-latency-ms 30 "
        "--max-ram-mb 100 --trials 20 --out search/pi",
        "edgecls search --data photos --device desktop-cpu --models simple --max-latency-ms 5 --trials 8 "
        "--out search/small",
        "edgecls search --report search/shapes",
    ),
)
@click.option("--data", help="Class-per-folder directory, or a built-in dataset: digits, shapes.")
@click.option("--device", help="A device profile measured here (e.g. desktop-cpu, a profile JSON) or user@host[:port].")
@click.option("--max-latency-ms", type=float, help="The budget: p50 latency of the shipped artifact on the device.")
@click.option("--max-ram-mb", type=float, help="Also a budget on the bench worker's peak RSS (MB).")
@click.option("--max-size-mb", type=float, help="Also a budget on the artifact file's size (MB).")
@click.option(
    "--trials",
    type=int,
    default=12,
    show_default=True,
    help="Trials that reach training (all workers together); candidates the latency model prunes are extra, "
    "up to 3 x this many proposals.",
)
@click.option("--out", type=click.Path(), help="The search folder: created, or resumed when it is a search.")
@click.option("--models", callback=_numbers(str, "model names"), help=f"Architectures to search: {_MODELS}.")
@click.option("--sizes", callback=_numbers(int, "image sizes"), help="Input sizes (default: 24-128 up to the data's).")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs per trial (early stopping applies).")
@click.option("--patience", type=int, default=3, show_default=True, help="Early stopping patience per trial.")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Accuracy points int8 may lose (gate).")
@click.option(
    "--seed", type=click.IntRange(0, 2**32 - 2), default=0, show_default=True, help="Split, training, search."
)
@click.option("--profile", help="An SSH device's profile: which artifact it runs, at how many threads.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="An ssh_config file (`ssh -F`) for an SSH device.")
@click.option("--overwrite", is_flag=True, help="Start again in an --out that holds a search (only a search).")
@click.option("--report", "report_of", type=click.Path(), help="(Re)write the report of the search in this folder.")
def search(**o):
    """Run the search, or with --report rewrite a search's report from what is on disk."""
    from edgecls.search import api
    from edgecls.search.types import Budget

    if o["report_of"]:
        api.report(o["report_of"])
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("data", "device", "max_latency_ms", "out") if o[k] is None]
    if missing:
        raise EdgeclsError(f"missing {', '.join(missing)}: a search needs --data, --device, --max-latency-ms and --out")
    cfg = api.SearchConfig(
        data=o["data"],
        device=o["device"],
        budget=Budget(o["max_latency_ms"], o["max_ram_mb"], o["max_size_mb"]),
        out=o["out"],
        trials=o["trials"],
        epochs=o["epochs"],
        patience=o["patience"],
        max_drop=o["max_drop"],
        seed=o["seed"],
        profile=o["profile"],
        ssh_config=o["ssh_config"],
        overwrite=o["overwrite"],
        **({"models": o["models"]} if o["models"] else {}),
        sizes=o["sizes"],
    )
    result = api.search(cfg)
    if result.chosen is not None:
        click.echo(str(result.out / "bundle"))
