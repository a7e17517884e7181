"""LiveKit Agents' own ``AgentSession`` against the stand-ins, for the "livekit" scenario.

Runs in the virtualenv of benchmarks/setup_livekit_agents.sh (the main environment's
livekit-agents plus its Deepgram, OpenAI and Silero plugins):

    BENCH_DEEPGRAM_URL=... BENCH_OPENAI_URL=... BENCH_EVENTS_FILE=... \
    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \
    python benchmarks/livekit_agent.py start

Set up as LiveKit's voice-agent quick start does (an ``AgentServer`` with an
``rtc_session`` entrypoint, Silero VAD loaded in the process prewarm, the default
process-per-job executor), with the worker's timings: VAD start after 100 ms of speech,
end after 300 ms of silence, ``turn_detection="vad"`` (no turn-detector model), no
endpointing delay (answer on the final transcript), interruption by VAD. Each job
appends its VAD decisions (``user_state_changed``) to BENCH_EVENTS_FILE as JSON lines.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    JobProcess,
    cli,
)
from livekit.plugins import deepgram, openai, silero

AGENT_NAME = os.environ.get("BENCH_AGENT_NAME", "lk-bench")
PROMPT = "You are the front desk of a small store. Answer in one or two short sentences."
GREETING = "Hello! Thanks for calling. How can I help you today?"

server = AgentServer(
    num_idle_processes=int(os.environ.get("BENCH_IDLE_PROCESSES", "3")),
    port=0,
    host="127.0.0.1",
)


def prewarm(proc: JobProcess) -> None:
    """Silero's ONNX model ships in the plugin's wheel: loading it downloads nothing."""
    proc.userdata["vad"] = silero.VAD.load(min_speech_duration=0.1, min_silence_duration=0.3)


server.setup_fnc = prewarm


def _writer(room: str) -> Any:
    path = os.environ.get("BENCH_EVENTS_FILE")

    def write(kind: str, at: float, **extra: Any) -> None:
        if not path:
            return
        line = json.dumps({"room": room, "type": kind, "at": at, **extra})
        with open(path, "a") as handle:  # one short line per write: appends stay whole
            handle.write(line + "\n")

    return write


@server.rtc_session(agent_name=AGENT_NAME)
async def entrypoint(ctx: JobContext) -> None:
    write = _writer(ctx.room.name)
    stt = deepgram.STT(model="nova-3", api_key="bench", interim_results=True, endpointing_ms=0,
                       base_url=os.environ["BENCH_DEEPGRAM_URL"] + "/v1/listen")
    # Deepgram's endpointing is off (as for the worker and Pipecat): the session itself sends
    # ``Finalize`` at its VAD's end of speech, which the framework does for STTs that declare
    # manual flush (the Deepgram plugin does not declare it in 1.8.9; its stream supports it)
    stt.capabilities.manual_flush = True
    session: AgentSession[None] = AgentSession(
        stt=stt,
        llm=openai.LLM(model="gpt-4o-mini", api_key="bench",
                       base_url=os.environ["BENCH_OPENAI_URL"]),
        tts=deepgram.TTS(model="aura-2-thalia-en", api_key="bench",
                         base_url=os.environ["BENCH_DEEPGRAM_URL"] + "/v1/speak"),
        vad=ctx.proc.userdata["vad"],
        turn_handling={
            "turn_detection": "vad",
            "endpointing": {"min_delay": 0.0, "max_delay": 3.0},
            # 0.0 would count every silent VAD window as speech (`speech_duration >= 0`):
            # 0.1 s is the VAD start, where the worker interrupts
            "interruption": {"mode": "vad", "min_duration": 0.1},
            "preemptive_generation": {"enabled": False},
        },
    )

    def user_state(ev: Any) -> None:
        # emitted synchronously at the VAD's decision; ``created_at`` is back-dated to the
        # estimated end of speech, so the decision time is taken here
        if ev.new_state == "speaking":
            write("vad_start", time.time(), speech_at=ev.created_at)
        elif ev.old_state == "speaking":
            write("vad_stop", time.time(), speech_end=ev.created_at)

    def agent_state(ev: Any) -> None:
        write("agent_" + str(ev.new_state), ev.created_at)

    session.on("user_state_changed", user_state)
    session.on("agent_state_changed", agent_state)
    await session.start(agent=Agent(instructions=PROMPT), room=ctx.room)
    write("session_started", time.time())
    handle = session.say(GREETING)
    try:
        await handle
        write("greeting_done", time.time(), interrupted=handle.interrupted)
    except Exception as exc:
        write("greeting_failed", time.time(), error=repr(exc))


if __name__ == "__main__":
    cli.run_app(server)
