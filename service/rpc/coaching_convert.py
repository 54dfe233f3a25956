"""Pure conversions between the Coach stream's protobuf messages and the coaching domain values."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import duration_pb2

from chat.v1 import chat_pb2 as pb
from service.coaching.events import (
    CoachEvent,
    Command,
    End,
    SessionEnded,
    SessionStarted,
    Start,
    TurnCompleted,
    UserTurn,
)
from service.domain import InvalidArgument, duration_of
from service.domain.coaching import CoachingSession
from service.domain.wrapup import EndReason, Stage
from service.personas import Persona
from service.ports import Audio
from service.replies import Delta
from service.rpc.convert import message, timestamp

STAGES = {
    Stage.ACTIVE: pb.COACHING_STAGE_ACTIVE,
    Stage.CONFIRMING: pb.COACHING_STAGE_CONFIRMING,
    Stage.WRAPPING_UP: pb.COACHING_STAGE_WRAPPING_UP,
    Stage.ENDED: pb.COACHING_STAGE_ENDED,
}
END_REASONS = {
    EndReason.NONE: pb.END_REASON_UNSPECIFIED,
    EndReason.USER_REQUESTED: pb.END_REASON_USER_REQUESTED,
    EndReason.LIMIT_REACHED: pb.END_REASON_LIMIT_REACHED,
    EndReason.CLIENT_ENDED: pb.END_REASON_CLIENT_ENDED,
}


def persona(p: Persona) -> pb.Persona:
    return pb.Persona(name=p.name, display_name=p.display_name, description=p.description)


def command(request: pb.CoachRequest) -> Command:
    kind = request.WhichOneof("request")
    if kind == "start":
        start = request.start
        return Start(
            persona=start.persona,
            conversation_id=start.conversation_id,
            session_id=start.session_id,
            max_turns=start.max_turns,
            max_duration=_limit(start.max_duration) if start.HasField("max_duration") else timedelta(0),
            speak=start.speak,
        )
    if kind == "user_turn":
        turn = request.user_turn
        if turn.WhichOneof("input") == "audio":
            return UserTurn(audio=Audio(turn.audio.data, turn.audio.mime_type))
        return UserTurn(text=turn.text)
    if kind == "end":
        return End()
    raise InvalidArgument.field("request", "must set one of start, user_turn or end")


def _limit(value: duration_pb2.Duration) -> timedelta:
    return duration_of("start.max_duration", value.seconds, value.nanos)


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def _audio(audio: Audio | None) -> pb.AudioClip | None:
    return pb.AudioClip(data=audio.data, mime_type=audio.mime_type) if audio else None


def session(s: CoachingSession, time_left: timedelta | None) -> pb.CoachingSession:
    return pb.CoachingSession(
        session_id=s.id,
        conversation_id=s.conversation_id,
        persona=s.persona,
        stage=STAGES[s.stage],
        turns_used=s.turns_used,
        max_turns=s.limits.max_turns,
        max_duration=_duration(s.limits.max_duration or None),
        start_time=timestamp(s.start_time),
        time_left=_duration(time_left),
        end_reason=END_REASONS[s.end_reason],
    )


def event(e: CoachEvent) -> pb.CoachResponse:
    if isinstance(e, Delta):
        return pb.CoachResponse(delta=pb.ReplyDelta(text=e.text, offset=e.offset))
    if isinstance(e, TurnCompleted):
        completed = pb.CoachTurnCompleted(
            message=message(e.message),
            turns_used=e.turns_used,
            time_left=_duration(e.time_left),
            user_message=message(e.user_message) if e.user_message else None,
            audio=_audio(e.audio),
        )
        return pb.CoachResponse(turn_completed=completed)
    if isinstance(e, SessionStarted):
        started = pb.CoachSessionStarted(session=session(e.session, e.time_left), rejoined=e.rejoined)
        return pb.CoachResponse(session_started=started)
    if isinstance(e, SessionEnded):
        ended = pb.CoachSessionEnded(
            reason=END_REASONS[e.reason],
            summary=e.summary,
            message=message(e.message),
            session=session(e.session, None),
            audio=_audio(e.audio),
        )
        return pb.CoachResponse(session_ended=ended)
    confirmation = pb.CoachWrapUpConfirmation(prompt=e.prompt, message=message(e.message))
    return pb.CoachResponse(wrap_up_confirmation=confirmation)
