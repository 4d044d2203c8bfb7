"""Progress lines for long steps, on stderr so stdout stays for results."""

import sys
import time


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def counted(items, total: int, what: str, every: float = 5.0):
    """Yield `items`, saying `what: done/total` every `every` seconds while the pass lasts.

    For passes over every file of a dataset (hashing, header checks, decoding): silent when the
    pass is quick, and a closing line with the time taken when it said anything at all.
    """
    started = last = time.monotonic()
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every and done < total:
            progress(f"{what}: {done:,}/{total:,} files")
            last = now
    if last > started:
        progress(f"{what}: {done:,}/{total:,} files in {time.monotonic() - started:.0f}s")
