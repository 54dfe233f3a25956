"""Local speech with the espeak-ng program: text on stdin, a WAV file on stdout. No server, no model files."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.domain import Unavailable
from service.ports import Audio

logger = logging.getLogger(__name__)


class EspeakSynthesizer:
    """Implements `ports.Synthesizer` by running `espeak-ng --stdout --stdin` once per text."""

    def __init__(self, program: str, *, voice: str, timeout: float) -> None:
        self._program = program
        self._voice = voice
        self._timeout = timeout

    def require(self) -> None:
        return None

    async def synthesize(self, text: str) -> Audio:
        # The text goes through stdin, never the command line: it cannot be taken for an option.
        process = await asyncio.create_subprocess_exec(
            self._program,
            "--stdout",
            "--stdin",
            "-v",
            self._voice,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self._timeout):
                wav, errors = await process.communicate(text.encode("utf-8"))
        except TimeoutError as error:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise Unavailable("the speech synthesizer took too long") from error
        if process.returncode != 0 or not wav.startswith(b"RIFF"):
            logger.warning("espeak-ng exited %s: %.200s", process.returncode, errors.decode(errors="replace"))
            raise Unavailable("the speech synthesizer failed")
        return Audio(wav, "audio/wav")

    async def aclose(self) -> None:
        return None
