"""The device side of `edgecls flash`: versioned slots, atomic `current`, signatures, smoke test, rollback.

Runs on the device (over SSH as `python3 -m edgecls.runtime.install COMMAND`) or on the host for a local target.
It needs only the runtime (no TensorFlow). See layout.py for the folder it owns and commit.py for the switch.
"""

from edgecls.runtime.install.api import apply, plan, rollback, status
from edgecls.runtime.install.layout import DeviceRoot, InstallError
from edgecls.runtime.install.signature import SIGNATURE, SignatureError, verify_bundle

__all__ = [
    "apply",
    "plan",
    "rollback",
    "status",
    "DeviceRoot",
    "InstallError",
    "SIGNATURE",
    "SignatureError",
    "verify_bundle",
]
