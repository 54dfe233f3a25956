"""The generation core: replies owned by the server, read through cursors, flushed in batches."""

from service.replies.buffer import Delta, Ended, Rewind
from service.replies.manager import Replies, ReplyEvent, ReplyLimits, Started

__all__ = ["Delta", "Ended", "Replies", "ReplyEvent", "ReplyLimits", "Rewind", "Started"]
