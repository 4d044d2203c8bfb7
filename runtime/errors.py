"""One exception family for failures a user can fix. The CLI prints the message as one line."""


class EdgeclsError(Exception):
    """A failure caused by input or environment, with a message that says the cause and the fix."""


class DataError(EdgeclsError):
    """A dataset or image that cannot be used."""


class ImageDecodeError(DataError):
    """One image file that cannot be decoded."""


class MissingDependencyError(EdgeclsError):
    """An optional package is needed for this step."""

    def __init__(self, package: str, extra: str, why: str = ""):
        reason = f" ({why})" if why else ""
        super().__init__(f"{package} is not installed{reason}: install it with `pip install 'edgecls[{extra}]'`")
        self.package = package
        self.extra = extra
