"""LiveKit rooms: the worker registers with a LiveKit server and is dispatched into rooms.

``livekit-agents`` does registration, job dispatch, load reporting and reconnection; the
``livekit`` rtc SDK carries the audio. One process, two kinds of event loop:

- the **main loop** owns everything that is a call: the :class:`CallManager`, the
  conversation engine, the ``AgentServer`` connection, and the media objects
  (``rtc.AudioSource`` for the agent's voice, ``rtc.AudioStream`` for the caller's). Media
  stays on the same loop as the engine, so a barge-in clears the published source in the
  loop iteration that decided it;
- each job runs on a **job thread** (``JobExecutorType.THREAD``) with its own loop holding
  the job's ``rtc.Room`` (signalling, track publication, text streams). It hands the call
  to the main loop and waits for it to end.

Which agent answers and which call this is come from the dispatch metadata, the room
metadata or the caller's metadata/attributes (:func:`parse_call_target`); the agent's
configuration is then fetched from ``/v1/agents/:id`` by the call manager as for any call.
Transcripts go to the room on the ``lk.transcription`` text-stream topic (LiveKit's
convention, read by the browser SDKs) and call events as JSON on the ``rymi.events`` topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livekit import rtc

from providers.base import AudioFormat, ConfigError
from runtime.calls import ActiveCall, CallManager, CallRejected, CallSpec

if TYPE_CHECKING:
    from livekit.agents import AgentServer, JobContext, JobRequest

log = logging.getLogger(__name__)

INPUT_FORMAT = AudioFormat("pcm16", 16000)  # what the caller's track is resampled to
OUTPUT_FORMAT = AudioFormat("pcm16", 24000)  # what the agent's voice is published at
AGENT_TRACK_NAME = "agent-voice"
TOPIC_TRANSCRIPTION = "lk.transcription"
TOPIC_EVENTS = "rymi.events"
ATTR_FINAL = "lk.transcription_final"
ATTR_SEGMENT = "lk.segment_id"
ATTR_TRACK = "lk.transcribed_track_id"
ATTR_AGENT_STATE = "lk.agent.state"
CALLER_WAIT_S = 60.0
#: Reasons for which the agent ended the call: the room is closed so the caller hears it.
AGENT_ENDED = frozenset({"agent_hangup", "max_duration", "silence_timeout", "worker_shutdown"})
DEFAULT_AGENT_NAME = "rymi-agent"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class LiveKitConfig:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str = DEFAULT_AGENT_NAME
    default_agent_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> LiveKitConfig:
        """Read ``livekit_*`` settings (``RYMI_LIVEKIT_*``), falling back to LiveKit's own
        ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` variables."""

        def value(name: str, env: str | None = None) -> str | None:
            raw = getattr(settings, name, None)
            if raw is not None and hasattr(raw, "get_secret_value"):
                raw = raw.get_secret_value()
            if raw in (None, "") and env:
                raw = os.environ.get(env)
            return str(raw) if raw not in (None, "") else None

        url = value("livekit_url", "LIVEKIT_URL")
        key = value("livekit_api_key", "LIVEKIT_API_KEY")
        secret = value("livekit_api_secret", "LIVEKIT_API_SECRET")
        missing = [
            name
            for name, v in (
                ("RYMI_LIVEKIT_URL", url),
                ("RYMI_LIVEKIT_API_KEY", key),
                ("RYMI_LIVEKIT_API_SECRET", secret),
            )
            if v is None
        ]
        if missing:
            raise ConfigError(f"LiveKit is not configured: set {', '.join(missing)}")
        assert url is not None and key is not None and secret is not None
        return cls(
            url=url,
            api_key=key,
            api_secret=secret,
            agent_name=value("livekit_agent_name") or DEFAULT_AGENT_NAME,
            default_agent_id=value("livekit_default_agent_id"),
        )


# --------------------------------------------------------------------------- metadata


class MetadataError(ValueError):
    """The job names no agent (or names it in a shape we cannot read)."""


@dataclass(frozen=True, slots=True)
class CallTarget:
    agent_id: str
    call_id: str | None
    metadata: dict[str, Any]


def _as_object(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        data: Any = dict(raw)
    else:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return {}  # free-form metadata another application put there: not ours
    if not isinstance(data, dict):
        return {}
    nested = data.get("rymi")
    return dict(nested) if isinstance(nested, dict) else data


def parse_call_target(
    *sources: str | Mapping[str, Any] | None, default_agent_id: str | None = None
) -> CallTarget:
    """Agent id, call id and metadata from the first source that names them.

    ``sources`` are, most specific first: the dispatch metadata, the room metadata, the
    caller's metadata and the caller's attributes. Each is a JSON object (or a mapping)
    with ``agent_id`` and optionally ``call_id`` and ``metadata``, either at the top level
    or under a ``"rymi"`` key; attributes may use ``rymi.agent_id`` / ``rymi.call_id``.
    """
    agent_id: str | None = None
    call_id: str | None = None
    metadata: dict[str, Any] = {}
    for source in sources:
        obj = _as_object(source)
        for prefix in ("", "rymi."):
            if agent_id is None and isinstance(obj.get(prefix + "agent_id"), str):
                agent_id = obj[prefix + "agent_id"] or None
            if call_id is None and isinstance(obj.get(prefix + "call_id"), str):
                call_id = obj[prefix + "call_id"] or None
        extra = obj.get("metadata")
        if isinstance(extra, dict):
            metadata = {**extra, **metadata}
    agent_id = agent_id or default_agent_id
    if not agent_id:
        raise MetadataError("no agent_id in the dispatch, room or participant metadata")
    return CallTarget(agent_id=agent_id, call_id=call_id, metadata=metadata)


# --------------------------------------------------------------------------- room updates


@dataclass(frozen=True, slots=True)
class TextOut:
    """One ``lk.transcription`` text stream: a whole segment so far (not a delta)."""

    text: str
    segment_id: str
    final: bool
    speaker: str  # "user" or "agent": whose identity and track the stream is stamped with


@dataclass(frozen=True, slots=True)
class DataOut:
    payload: str
    topic: str


@dataclass(frozen=True, slots=True)
class StateOut:
    state: str  # lk.agent.state: "listening", "thinking", "speaking"


RoomUpdate = TextOut | DataOut | StateOut


class RoomUpdates:
    """Turns the call's live messages (see ``LiveSink``) into what the room should get.

    Pure: no I/O, so the mapping is tested without a room. The user's words appear as
    interim segments while recognised and as a final segment when committed; the agent's as
    interim text while synthesised and as a final segment with what was actually heard.
    """

    def __init__(self, call_key: str) -> None:
        self.call_key = call_key
        self._user_seq = 0
        self._user_open = False
        self._agent_text: dict[int, list[str]] = {}

    def _user_segment(self) -> str:
        return f"{self.call_key}-user-{self._user_seq}"

    def agent_segment(self, turn_id: int) -> str:
        return f"{self.call_key}-agent-{turn_id}"

    def handle(self, message: Mapping[str, Any]) -> list[RoomUpdate]:
        kind = message.get("type")
        if kind == "transcript":
            return self._transcript(message.get("segment") or {})
        if kind == "live":
            return self._live(message.get("live") or {})
        if kind == "event":
            return self._event(message.get("event") or {})
        return []

    def _transcript(self, segment: Mapping[str, Any]) -> list[RoomUpdate]:
        text = str(segment.get("text") or "")
        if segment.get("role") == "user":
            seg = self._user_segment()
            self._user_seq += 1
            self._user_open = False
            return [TextOut(text, seg, True, "user")]
        turn = int(segment.get("turn_id") or 0)
        self._agent_text.pop(turn, None)
        return [TextOut(text, self.agent_segment(turn), True, "agent")]

    def _live(self, live: Mapping[str, Any]) -> list[RoomUpdate]:
        kind = live.get("type")
        if kind == "user.partial" and live.get("text"):
            self._user_open = True
            return [TextOut(str(live["text"]), self._user_segment(), False, "user")]
        if kind == "agent.text" and live.get("text"):
            turn = int(live.get("turn_id") or 0)
            parts = self._agent_text.setdefault(turn, [])
            parts.append(str(live["text"]))
            return [TextOut(" ".join(parts), self.agent_segment(turn), False, "agent")]
        return []

    def _event(self, event: Mapping[str, Any]) -> list[RoomUpdate]:
        updates: list[RoomUpdate] = [
            DataOut(json.dumps(dict(event), separators=(",", ":"), default=str), TOPIC_EVENTS)
        ]
        state = {
            "agent.speech_started": "speaking",
            "agent.speech_stopped": "listening",
            "agent.paused": "listening",
            "user.speech_stopped": "thinking",
        }.get(str(event.get("type")))
        if event.get("type") == "call.status":
            status = (event.get("data") or {}).get("status")
            state = "listening" if status == "in_progress" else None
        if state is not None:
            updates.append(StateOut(state))
        return updates


# --------------------------------------------------------------------------- audio out


@dataclass(slots=True)
class ClearRecord:
    frames_sent: int
    dropped_ms: float
    queued_after_ms: float


class RoomAudioOutput:
    """The agent's voice as a published LiveKit audio track.

    ``send_frame`` hands a 20 ms frame to the ``rtc.AudioSource`` (the engine paces them);
    ``clear`` drops what the source still queues, synchronously, in the engine's own loop
    iteration. Marks fire when the audio queued before them has played out.
    """

    format = OUTPUT_FORMAT

    def __init__(self, source: rtc.AudioSource) -> None:
        self.source = source
        self.call: ActiveCall | None = None
        self.frames_sent = 0
        self.clears: list[ClearRecord] = []
        self._marks: set[asyncio.TimerHandle] = set()
        self._closed = False

    async def send_frame(self, frame: bytes) -> None:
        if self._closed or not frame:
            return
        samples = len(frame) // self.format.bytes_per_sample
        audio = rtc.AudioFrame(frame, self.format.sample_rate, 1, samples)
        self.frames_sent += 1
        await self.source.capture_frame(audio)

    async def clear(self) -> None:
        dropped = self.source.queued_duration
        self.source.clear_queue()
        for handle in self._marks:
            handle.cancel()
        self._marks.clear()
        record = ClearRecord(
            frames_sent=self.frames_sent,
            dropped_ms=round(dropped * 1000, 1),
            queued_after_ms=round(self.source.queued_duration * 1000, 1),
        )
        self.clears.append(record)
        if self.call is not None:
            self.call.report_event(
                "livekit.audio_cleared",
                {
                    "frames_sent": record.frames_sent,
                    "dropped_ms": record.dropped_ms,
                    "queued_after_ms": record.queued_after_ms,
                },
            )

    async def mark(self, name: str) -> None:
        call = self.call
        if call is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._marks.discard(handle)
            call.on_mark(name)

        handle = loop.call_later(self.source.queued_duration, fire)
        self._marks.add(handle)

    def note_decision(self, kind: str, data: Mapping[str, Any]) -> None:
        """The engine decided to stop the agent's audio (pause or barge-in): record how
        many frames had been handed to the source at that instant, to compare with the
        clear that follows (``livekit.audio_cleared``)."""
        if self.call is not None:
            self.call.report_event(
                "livekit.barge_in",
                {"decision": kind, "turn_id": data.get("turn_id"), "frames_sent": self.frames_sent},
            )

    def stop(self) -> None:
        """No more audio: the call is over."""
        self._closed = True
        for handle in self._marks:
            handle.cancel()
        self._marks.clear()
        with contextlib.suppress(Exception):
            self.source.clear_queue()

    async def release(self) -> None:
        await self.source.aclose()


# --------------------------------------------------------------------------- room side


class RoomPublisher:
    """The call's live sink: transcripts, events and agent state, published to the room.

    ``send_json`` is called on the main loop and never blocks: updates are handed to a
    writer task on the job's loop, which owns the room.
    """

    def __init__(
        self,
        room: rtc.Room,
        room_loop: asyncio.AbstractEventLoop,
        call_key: str,
        caller_identity: str,
        agent_track_sid: str,
        output: RoomAudioOutput | None = None,
    ) -> None:
        self.room = room
        self.room_loop = room_loop
        self.caller_identity = caller_identity
        self.caller_track_sid: str | None = None
        self.agent_track_sid = agent_track_sid
        self.output = output
        self.updates = RoomUpdates(call_key)
        self._queue: asyncio.Queue[RoomUpdate | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._state: str | None = None
        self.failures = 0

    def start(self) -> None:
        """Start the writer; call on the room's loop."""
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="lk-publish")

    def send_json(self, data: Mapping[str, Any]) -> None:
        if data.get("type") == "event" and self.output is not None:
            event = data.get("event") or {}
            if event.get("type") in ("agent.interrupted", "agent.paused"):
                self.output.note_decision(str(event["type"]), event.get("data") or {})
        for update in self.updates.handle(data):
            self._post(update)

    def _post(self, update: RoomUpdate | None) -> None:
        with contextlib.suppress(RuntimeError):  # the job's loop is already gone
            self.room_loop.call_soon_threadsafe(self._queue.put_nowait, update)

    async def close(self) -> None:
        """Flush what is queued and stop; call on the room's loop."""
        self._queue.put_nowait(None)
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._writer, 5.0)
            self._writer.cancel()

    async def _write(self) -> None:
        while (update := await self._queue.get()) is not None:
            if not self.room.isconnected():
                continue
            try:
                await self._publish(update)
            except Exception as exc:  # a room hiccup never breaks the call
                self.failures += 1
                log.debug("room update dropped: %s", exc)

    async def _publish(self, update: RoomUpdate) -> None:
        participant = self.room.local_participant
        if isinstance(update, TextOut):
            user = update.speaker == "user"
            track = self.caller_track_sid if user else self.agent_track_sid
            attributes = {ATTR_FINAL: "true" if update.final else "false",
                          ATTR_SEGMENT: update.segment_id}
            if track:
                attributes[ATTR_TRACK] = track
            writer = await participant.stream_text(
                topic=TOPIC_TRANSCRIPTION,
                attributes=attributes,
                sender_identity=self.caller_identity if user else None,
            )
            await writer.write(update.text)
            await writer.aclose()
        elif isinstance(update, DataOut):
            await participant.publish_data(update.payload, reliable=True, topic=update.topic)
        elif isinstance(update, StateOut) and update.state != self._state:
            self._state = update.state
            await participant.set_attributes({ATTR_AGENT_STATE: update.state})


class RoomCall:
    """One dispatched job's call, run on the main loop."""

    def __init__(
        self,
        manager: CallManager,
        target: CallTarget,
        spec_extra: Mapping[str, Any],
        output: RoomAudioOutput,
        publisher: RoomPublisher,
    ) -> None:
        self.manager = manager
        self.target = target
        self.spec_extra = dict(spec_extra)
        self.output = output
        self.publisher = publisher
        self.call: ActiveCall | None = None
        self._streams: list[tuple[rtc.AudioStream, asyncio.Task[None]]] = []
        self._done: asyncio.Future[str] | None = None
        self._closed = False

    def _done_future(self) -> asyncio.Future[str]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        return self._done

    async def run(self) -> str:
        """Open the call, wait for it to end, return the reason."""
        done = self._done_future()
        extra = self.spec_extra
        spec = CallSpec(
            agent_id=self.target.agent_id,
            transport="livekit",
            input_format=INPUT_FORMAT,
            call_id=self.target.call_id,
            direction="inbound",
            from_=extra.get("from"),
            to=extra.get("to"),
            carrier_call_id=extra.get("carrier_call_id"),
            metadata={**self.target.metadata, **extra.get("metadata", {})},
        )
        try:
            self.call = call = await self.manager.open_call(spec, self.output, self.publisher)
        except CallRejected as exc:
            log.warning("LiveKit job not taken: %s (%s)", exc.reason, exc.code)
            self.publisher.send_json(
                {"type": "event", "event": {"type": "call.rejected", "at": time.time(),
                                            "data": {"code": exc.code, "reason": exc.reason}}}
            )
            await self._cleanup()
            return f"rejected:{exc.code}"
        except BaseException:
            await self._cleanup()
            raise
        self.output.call = call
        try:
            await asyncio.wait([call.ended, done], return_when=asyncio.FIRST_COMPLETED)
            if not call.ended.done():  # the caller left (perhaps during the set-up)
                await call.hangup(done.result())
            return call.ended.result()
        except asyncio.CancelledError:
            await asyncio.shield(call.hangup("job_terminated"))
            raise
        finally:
            await self._cleanup()

    def attach(self, track: rtc.Track, track_sid: str) -> None:
        """The caller's audio track was subscribed: feed it to the call (main loop)."""
        if self._closed:
            return
        self.publisher.caller_track_sid = track_sid
        stream = rtc.AudioStream(
            track,
            loop=asyncio.get_running_loop(),
            sample_rate=INPUT_FORMAT.sample_rate,
            num_channels=1,
        )
        task = asyncio.get_running_loop().create_task(self._pump(stream), name="lk-caller-audio")
        self._streams.append((stream, task))

    async def _pump(self, stream: rtc.AudioStream) -> None:
        async for event in stream:
            call = self.call
            if call is not None:
                await call.push_audio(event.frame.data.tobytes())

    def finish(self, reason: str) -> None:
        """The caller left or the room went away (main loop)."""
        done = self._done_future()
        if not done.done():
            done.set_result(reason)

    async def _cleanup(self) -> None:
        self._closed = True
        # once the caller (or the room) is gone, LiveKit has freed their track's streams
        gone = self._done is not None and self._done.done()
        for stream, task in self._streams:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if not gone:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        self._streams.clear()
        self.output.stop()
        with contextlib.suppress(Exception):
            await self.output.release()


# --------------------------------------------------------------------------- the worker


class LiveKitWorker:
    """Registers with LiveKit and runs every dispatched job as a call of ``manager``."""

    def __init__(self, manager: CallManager, config: LiveKitConfig, *, host: str = "127.0.0.1"):
        self.manager = manager
        self.config = config
        self.host = host
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: AgentServer | None = None
        self.registered = asyncio.Event()
        self.registrations = 0
        self.worker_id = ""
        self._accepting = 0
        self._run_task: asyncio.Task[None] | None = None

    # -- capacity ----------------------------------------------------------------------

    def load(self, server: AgentServer) -> float:
        """Active calls (or running jobs, while a call is being set up) over the limit."""
        busy = max(len(self.manager.calls), len(server.active_jobs))
        return min(1.0, busy / self.manager.max_calls) if self.manager.max_calls else 1.0

    def _has_room(self) -> bool:
        assert self.server is not None
        busy = max(len(self.manager.calls), len(self.server.active_jobs)) + self._accepting
        return not self.manager.draining and busy < self.manager.max_calls

    # -- livekit-agents callbacks ------------------------------------------------------

    async def _on_request(self, request: JobRequest) -> None:
        """Main loop. Accept while there is capacity; otherwise let another worker have it."""
        if not self._has_room():
            log.info("declining job %s: %s", request.id,
                     "draining" if self.manager.draining else "at capacity")
            await request.reject(terminate=False)
            return
        self._accepting += 1
        try:
            await request.accept(
                identity=f"rymi-agent-{request.id}",
                name="Rymi agent",
                attributes={"rymi.worker_id": self.manager.worker_id},
            )
        finally:
            self._accepting -= 1

    async def _entrypoint(self, ctx: JobContext) -> None:
        """Job thread. Join the room, hand the call to the main loop, wait for its end."""
        from livekit.agents import AutoSubscribe

        main = self.loop
        assert main is not None
        room = ctx.room
        room_loop = asyncio.get_running_loop()
        subscribed: list[tuple[rtc.Track, str, str]] = []
        holder: dict[str, RoomCall] = {}

        def on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication,
                     participant: rtc.RemoteParticipant) -> None:
            if track.kind != rtc.TrackKind.KIND_AUDIO:
                return
            session = holder.get("call")
            if session is None:
                subscribed.append((track, pub.sid, participant.identity))
            elif participant.identity == session.publisher.caller_identity:
                main.call_soon_threadsafe(session.attach, track, pub.sid)

        room.on("track_subscribed", on_track)
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        try:
            caller = await asyncio.wait_for(ctx.wait_for_participant(), CALLER_WAIT_S)
        except TimeoutError:
            ctx.shutdown("no_caller")
            return
        try:
            target = parse_call_target(
                ctx.job.metadata,
                room.metadata,
                caller.metadata,
                dict(caller.attributes),
                default_agent_id=self.config.default_agent_id,
            )
        except MetadataError as exc:
            log.warning("job %s: %s", ctx.job.id, exc)
            ctx.shutdown("no_agent")
            return

        source = rtc.AudioSource(OUTPUT_FORMAT.sample_rate, 1, loop=main)
        track = rtc.LocalAudioTrack.create_audio_track(AGENT_TRACK_NAME, source)
        publication = await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        output = RoomAudioOutput(source)
        publisher = RoomPublisher(
            room, room_loop, f"{room.name}-{ctx.job.id}", caller.identity, publication.sid,
            output,
        )
        publisher.start()
        session = RoomCall(
            self.manager,
            target,
            {
                "from": caller.identity,
                "to": room.name,
                "carrier_call_id": ctx.job.id,
                "metadata": {"livekit_room": room.name, "livekit_job_id": ctx.job.id,
                             "livekit_participant": caller.identity},
            },
            output,
            publisher,
        )
        holder["call"] = session
        for sub_track, sid, identity in subscribed:
            if identity == caller.identity:
                main.call_soon_threadsafe(session.attach, sub_track, sid)

        def on_left(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == caller.identity:
                main.call_soon_threadsafe(session.finish, "caller_left")

        def on_disconnected(*_args: Any) -> None:
            main.call_soon_threadsafe(session.finish, "room_disconnected")

        room.on("participant_disconnected", on_left)
        room.on("disconnected", on_disconnected)
        if caller.identity not in room.remote_participants:  # left before we listened
            main.call_soon_threadsafe(session.finish, "caller_left")
        future = asyncio.run_coroutine_threadsafe(session.run(), main)
        try:
            reason = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            await publisher.close()
        if reason in AGENT_ENDED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ctx.delete_room(), 5.0)
        ctx.shutdown(reason)

    # -- lifecycle -----------------------------------------------------------------------

    def _build_server(self) -> AgentServer:
        from livekit.agents import AgentServer, JobExecutorType

        # the framework's warm-up would load its own local models; this worker has its own
        os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
        server = AgentServer(
            job_executor_type=JobExecutorType.THREAD,
            load_threshold=1.0,
            num_idle_processes=max(1, min(self.manager.max_calls, 2)),
            # the worker itself retries forever: a LiveKit restart must not kill it
            max_retry=1_000_000,
            ws_url=self.config.url,
            api_key=self.config.api_key,
            api_secret=self.config.api_secret,
            host=self.host,
            port=0,
            load_fnc=self.load,
            drain_timeout=0,
            shutdown_process_timeout=10.0,
        )
        server.rtc_session(
            self._entrypoint, agent_name=self.config.agent_name, on_request=self._on_request
        )

        def registered(worker_id: str, _info: Any) -> None:
            self.worker_id = worker_id
            self.registrations += 1
            self.registered.set()
            log.info("registered with LiveKit as %s (%s)", worker_id, self.config.agent_name)

        server.on("worker_registered", registered)
        return server

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = self._build_server()
        self._run_task = asyncio.create_task(self.server.run(), name="livekit-agent-server")

    @property
    def run_task(self) -> asyncio.Task[None]:
        assert self._run_task is not None
        return self._run_task

    async def drain(self, grace_s: float) -> None:
        """No new jobs; active calls finish (ended after ``grace_s``); then close."""
        server = self.server
        if server is None:
            return
        jobs_done = asyncio.create_task(server.drain(timeout=None))  # status: full, no new jobs
        await self.manager.drain(grace_s)
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(jobs_done), 20.0)
        jobs_done.cancel()
        await self.aclose()

    async def aclose(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.aclose()
        if self._run_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._run_task, 5.0)


async def run_livekit_worker(settings: Any, manager: CallManager | None = None) -> int:
    """``rymi-worker livekit``: a worker process that takes its calls from LiveKit.

    Without a ``manager`` it starts the usual worker process (``runtime.server.Worker``:
    local endpoints, outbox delivery, the embedded /v1 API when no ``RYMI_API_URL``) and
    registers it with LiveKit. SIGTERM/SIGINT drain: LiveKit stops sending jobs, active
    calls finish within ``drain_timeout_s`` (then they are ended), reports are flushed.
    """
    try:
        config = LiveKitConfig.from_settings(settings)
    except ConfigError as exc:
        print(f"rymi-worker livekit: {exc}", flush=True)
        return 2
    worker = None
    if manager is None:
        from runtime.server import Worker

        worker = Worker(settings, embedded_api=getattr(settings, "api_url", None) is None)
        await worker.start()
        assert worker.manager is not None
        manager = worker.manager
        print(f"rymi-worker listening on {worker.url}", flush=True)
    drain_timeout = float(getattr(settings, "drain_timeout_s", 30.0))
    agent = LiveKitWorker(manager, config, host=str(getattr(settings, "host", "127.0.0.1")))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    announce = asyncio.create_task(_announce(agent))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, agent.run_task], return_when=asyncio.FIRST_COMPLETED)
    announce.cancel()
    code = 0
    if agent.run_task.done() and not stopping.done():
        error = agent.run_task.exception() if not agent.run_task.cancelled() else None
        log.error("LiveKit agent server stopped: %s", error)
        code = 1
    print(f"draining: no new jobs, waiting up to {drain_timeout:g}s for calls", flush=True)
    await agent.drain(drain_timeout)
    stopping.cancel()
    if worker is not None:
        await worker.stop(drain_timeout=drain_timeout)
    print("rymi-worker livekit stopped", flush=True)
    return code


async def _announce(agent: LiveKitWorker) -> None:
    """One stdout line per registration, for operators and tests."""
    seen = 0
    while True:
        await agent.registered.wait()
        if agent.registrations != seen:
            seen = agent.registrations
            print(f"registered with LiveKit as {agent.worker_id}", flush=True)
        agent.registered.clear()
