"""Progress lines for long steps, on stderr so stdout stays for results."""

import sys


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
