"""The generation core: replies owned by the server, read through cursors, flushed in batches."""

from service.replies.buffer import Delta, Ended, Rewind
from service.replies.replies import Replies, ReplyEvent, ReplyOptions, Started

__all__ = ["Delta", "Ended", "Replies", "ReplyEvent", "ReplyOptions", "Rewind", "Started"]
