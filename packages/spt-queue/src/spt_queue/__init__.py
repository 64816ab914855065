"""spt-queue: a ring buffer of recent training rows and the passive store that fills it."""

from spt_queue.__about__ import __version__
from spt_queue.discovery import find_or_create_queue, find_queue, read_aligned
from spt_queue.online_queue import OnlineQueue
from spt_queue.ring_buffer import RingBuffer

__all__ = [
    "OnlineQueue",
    "RingBuffer",
    "__version__",
    "find_or_create_queue",
    "find_queue",
    "read_aligned",
]
