"""Label captured frames (runtime/daemon/capture.py's layout) into class folders: a local web page, one key per
decision, every decision a journaled atomic move (store.py); Label Studio's task and export formats (labelstudio.py).
"""

from edgecls.labeling.labelstudio import export_tasks, import_export, label_config
from edgecls.labeling.names import check_label
from edgecls.labeling.server import LabelServer
from edgecls.labeling.store import DISCARDED, FrameGone, LabelStore

__all__ = [
    "DISCARDED",
    "FrameGone",
    "LabelServer",
    "LabelStore",
    "check_label",
    "export_tasks",
    "import_export",
    "label_config",
]
