"""`chat` with no command: a conversation in the terminal. Ctrl-C cancels a reply (not the program); Ctrl-D or
/quit leaves. Slash commands work on the current conversation."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from chat.v1 import chat_pb2 as pb
from chat_client.cli import branching, coaching, exporting, failures
from chat_client.cli.commands import show_message, when
from chat_client.cli.replying import show_reply
from chat_client.cli.terminal import Terminal
from chat_client.errors import ChatError
from chat_client.sync import SyncChatClient

HELP = """\
/new [TITLE]            start a new conversation
/list                   your conversations
/open ID                continue a conversation
/history                the current conversation's messages (its current branch), with their ids
/regenerate             a new reply to your last message
/edit TEXT              edit your last message, and get a new reply
/siblings [ID]          the versions of a message (default: the last one)
/switch ID              make the branch through message ID current
/delete ID              delete message ID and what follows it
/export FORMAT [FILE]   export the current conversation (markdown, json, csv)
/search QUERY           search your messages
/coach PERSONA          a coaching session
/help                   this list
/quit                   leave (or Ctrl-D)"""

# Nothing else would work either: leave with that status. Other failures are reported and the session goes on.
_LEAVE_ON = (failures.EXIT_UNREACHABLE, failures.EXIT_AUTH)


class Session:
    def __init__(self, client: SyncChatClient, term: Terminal, *, model: str = "", persona: str = "") -> None:
        self.client = client
        self.term = term
        self.model = model
        self.persona = persona
        self.conversation: pb.Conversation | None = None
        self.title = ""
        self.read: Callable[[str], str] = input
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "new": self.new,
            "list": self.list_conversations,
            "open": self.open,
            "history": self.history,
            "export": self.export,
            "search": self.search,
            "coach": self.coach,
            "regenerate": self.regenerate,
            "edit": self.edit,
            "siblings": self.siblings,
            "switch": self.switch,
            "delete": self.delete,
            "help": lambda _: self.term.line(HELP),
        }

    def run(self) -> int:
        self.term.note("Type a message; /help for commands, Ctrl-C cancels a reply, Ctrl-D leaves.")
        while True:
            try:
                line = self.read(self.term.style("you> ", "bold", "green")).strip()
            except EOFError:
                self.term.line()
                return 0
            except KeyboardInterrupt:
                self.term.line()
                self.term.note("(Ctrl-D or /quit to leave)")
                continue
            if line in ("/quit", "/exit"):
                return 0
            if not line:
                continue
            try:
                self.command(line[1:]) if line.startswith("/") else self.say(line)
            except ChatError as error:
                status = failures.report(self.term, error, self.client.client.address)
                if status in _LEAVE_ON:
                    return status
            except (exporting.ExportError, OSError) as error:
                self.term.error(str(error))
            except KeyboardInterrupt:
                self.term.line()
                self.term.note("stopped following the reply (it may still complete on the server)")

    def command(self, text: str) -> None:
        try:
            name, *args = shlex.split(text)
        except ValueError as error:
            self.term.error(str(error))
            return
        handler = self.commands.get(name)
        if handler is None:
            self.term.error(f"unknown command /{name}; /help lists them")
            return
        handler(args)

    def say(self, text: str) -> None:
        if self.conversation is None:
            title = self.title or " ".join(text.split())[:60]
            self.conversation = self.client.create_conversation(title=title, model=self.model, persona=self.persona)
        stream = self.client.stream_reply(self.conversation.conversation_id, text)
        message, stats = show_reply(self.term, stream)
        self.term.note(stats.describe())
        failures.report_reply(self.term, message)

    def new(self, args: list[str]) -> None:
        self.conversation, self.title = None, " ".join(args)
        self.term.note("new conversation: it starts with your next message")

    def list_conversations(self, args: list[str]) -> None:
        for count, c in enumerate(self.client.iter_conversations(page_size=20)):
            if count >= 20:
                break
            current = " *" if self.conversation and c.conversation_id == self.conversation.conversation_id else ""
            self.term.line(f"{c.conversation_id}  {self.term.style(when(c, 'update_time'), 'dim')}  {c.title}{current}")

    def open(self, args: list[str]) -> None:
        if len(args) != 1:
            self.term.error("usage: /open CONVERSATION_ID")
            return
        self.conversation = self.client.get_conversation(args[0])
        self.term.note(f"opened {self.conversation.title!r} ({self.conversation.model})")
        recent = self.client.list_messages(args[0], page_size=1000).messages[-6:]
        for message in recent:
            show_message(self.term, message)

    def history(self, args: list[str]) -> None:
        if self._current() is None:
            return
        assert self.conversation is not None
        for message in self.client.iter_messages(self.conversation.conversation_id):
            show_message(self.term, message)

    def export(self, args: list[str]) -> None:
        if self._current() is None:
            return
        assert self.conversation is not None
        if not args or args[0] not in ("markdown", "json", "csv"):
            self.term.error("usage: /export markdown|json|csv [FILE]")
            return
        output = args[1] if len(args) > 1 else f"{self.conversation.conversation_id}.{_EXTENSIONS[args[0]]}"
        written = exporting.export(self.client, self.conversation.conversation_id, args[0], output=output)
        self.term.note(f"wrote {written} bytes to {output}")

    def search(self, args: list[str]) -> None:
        if not args:
            self.term.error("usage: /search QUERY")
            return
        results = self.client.search_messages(" ".join(args), page_size=10).results
        for result in results:
            self.term.line(f"{self.term.style(result.conversation_title, 'dim')}  {result.message.conversation_id}")
            self.term.line("  " + self.term.highlight(" ".join(result.snippet.split())))
        if not results:
            self.term.note("no matches")

    def coach(self, args: list[str]) -> None:
        if len(args) != 1:
            self.term.error("usage: /coach PERSONA")
            return
        coaching.coach(self.client, self.term, args[0], read=self.read)

    def regenerate(self, args: list[str]) -> None:
        last = self._last(pb.ROLE_USER)
        if last is not None:
            branching.follow(self.term, self.client.regenerate_reply(last.message_id), json=False)

    def edit(self, args: list[str]) -> None:
        if not args:
            self.term.error("usage: /edit TEXT")
            return
        last = self._last(pb.ROLE_USER)
        if last is not None:
            branching.follow(self.term, self.client.edit_message(last.message_id, " ".join(args)), json=False)

    def siblings(self, args: list[str]) -> None:
        target = args[0] if args else (last.message_id if (last := self._last()) else "")
        if target:
            branching.show_siblings(self.client, self.term, target)

    def switch(self, args: list[str]) -> None:
        if len(args) != 1:
            self.term.error("usage: /switch MESSAGE_ID")
            return
        if self._current() is None:
            return
        assert self.conversation is not None
        self.conversation = self.client.set_current_branch(self.conversation.conversation_id, args[0])
        for message in list(self.client.iter_messages(self.conversation.conversation_id, page_size=1000))[-2:]:
            show_message(self.term, message)

    def delete(self, args: list[str]) -> None:
        if len(args) != 1:
            self.term.error("usage: /delete MESSAGE_ID")
            return
        deleted = self.client.delete_message(args[0])
        self.term.note(f"deleted {deleted.deleted_count} message(s)")

    def _last(self, role: int | None = None) -> pb.Message | None:
        """The last message (of `role`) on the current conversation's current branch."""
        if self._current() is None:
            return None
        assert self.conversation is not None
        messages = self.client.iter_messages(self.conversation.conversation_id, page_size=1000)
        found = [m for m in messages if role is None or m.role == role]
        if not found:
            self.term.error("no such message on the current branch yet")
            return None
        return found[-1]

    def _current(self) -> pb.Conversation | None:
        if self.conversation is None:
            self.term.error("no conversation yet: send a message or /open one")
        return self.conversation


_EXTENSIONS = {"markdown": "md", "json": "json", "csv": "csv"}
