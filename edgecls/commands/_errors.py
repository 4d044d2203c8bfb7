"""The click command class whose bad option values are one `error:` line, like every other refusal."""

from __future__ import annotations

import click

from edgecls.runtime.errors import EdgeclsError


class OneLineErrors(click.Command):
    """A bad option value is one `error:` line and exit 1 (the CLI's EdgeclsError path), not click's
    usage block and exit 2."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as exc:
            raise EdgeclsError(exc.format_message()) from exc
