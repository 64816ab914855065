"""A shared test harness for spt callbacks (torch and lightning only).

`quiet_trainer` builds a CPU Trainer that prints nothing, `DictDataset` serves dict batches,
`ResumableLoader` serves them so that a fit resumes mid-epoch where it stopped, `Backbone` is a
tiny LightningModule whose steps return ``{"loss", <feature key>, ...}``, `RecordingLogger`
keeps every logged value, `forbid_host_sync` refuses host syncs, `SyncFreeAccuracy` is a metric
that makes none, `captured_logs` keeps spt's log lines, `free_port` gives a DDP launch its
rendezvous port, `run_ranks` starts a script once per rank (each joins the group with
`join_ranks`), and `CallbackTester` runs a callback on one process or on two gloo processes and
compares what it logged with a reference.
"""

from spt_core.testing.host_sync import HostSyncError, forbid_host_sync
from spt_core.testing.launch import free_port, join_ranks, run_ranks
from spt_core.testing.logs import captured_logs
from spt_core.testing.parts import (
    Backbone,
    DictDataset,
    RecordingLogger,
    ResumableLoader,
    SyncFreeAccuracy,
    quiet_trainer,
)
from spt_core.testing.tester import CallbackTester

__all__ = [
    "Backbone",
    "CallbackTester",
    "DictDataset",
    "HostSyncError",
    "RecordingLogger",
    "ResumableLoader",
    "SyncFreeAccuracy",
    "captured_logs",
    "forbid_host_sync",
    "free_port",
    "join_ranks",
    "quiet_trainer",
    "run_ranks",
]
