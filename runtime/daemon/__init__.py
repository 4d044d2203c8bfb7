"""The camera classification daemon: supervised sources, one shared model, sinks, metrics, HTTP.

See `edgecls.runtime.daemon.daemon.Daemon`; the modules each do one step of the chain
(supervisor -> loop -> sinks and metrics -> http).
"""

from edgecls.runtime.daemon.daemon import Daemon

__all__ = ["Daemon"]
