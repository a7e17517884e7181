"""The Pipecat side of the comparison: a Twilio Media Streams bot, as Pipecat's docs set it up.

Run with the Pipecat virtualenv's Python (benchmarks/requirements-pipecat.txt), never
imported by the worker. It follows Pipecat's ``twilio-chatbot`` example (FastAPI +
``FastAPIWebsocketTransport`` + ``TwilioFrameSerializer``, ``parse_telephony_websocket``,
``LLMContextAggregatorPair`` with Silero VAD, 8 kHz pipeline) with the same provider
stand-ins as the worker: ``DeepgramSTTService``, ``OpenAILLMService`` and
``DeepgramTTSService`` pointed at the local servers of benchmarks/standins.py.

What differs from the example, and why (docs/benchmarks.md):

- ``auto_hang_up=False``: the example hangs up through Twilio's REST API; nothing may
  leave 127.0.0.1 here, and the caller hangs up itself;
- the turn ends on VAD silence (``SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0)``)
  instead of the Smart Turn model, and the VAD uses the worker's timings (start 0.1 s,
  stop 0.3 s), so both stacks have the same, deterministic endpoint;
- Deepgram endpointing is off (the final comes from ``Finalize`` at the VAD stop, as in
  the worker); the greeting is a ``TTSSpeakFrame`` (the worker's ``first_message``);
- logs at INFO like the worker (loguru's default is DEBUG);
- the VAD's decisions are written to ``BENCH_EVENTS_FILE`` (JSON lines) so the benchmark
  can measure from them, and ``GET /metrics/loop`` serves the event-loop lag monitor of
  the worker (runtime/metrics.py).

    BENCH_DEEPGRAM_URL=… BENCH_OPENAI_URL=… python benchmarks/pipecat_bot.py --port 8765
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runtime.metrics

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from runtime.metrics import LoopLagMonitor

GREETING = os.environ.get("BENCH_GREETING", "Hello! Thanks for calling. How can I help you today?")
PROMPT = "You are the front desk of a small store. Answer in one or two short sentences."
DEEPGRAM_URL = os.environ.get("BENCH_DEEPGRAM_URL", "http://127.0.0.1:1")
OPENAI_URL = os.environ.get("BENCH_OPENAI_URL", "http://127.0.0.1:1/v1")
EVENTS_FILE = os.environ.get("BENCH_EVENTS_FILE")

monitor = LoopLagMonitor()


@contextlib.asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    monitor.start()
    yield
    await monitor.stop()


app = FastAPI(lifespan=_lifespan)
_events = open(EVENTS_FILE, "a", buffering=1) if EVENTS_FILE else None


def record(stream: str, kind: str) -> None:
    if _events is not None:
        _events.write(json.dumps({"stream": stream, "type": kind, "at": time.time()}) + "\n")


class ProbedSileroVAD(SileroVADAnalyzer):
    """Silero VAD that notes when its decisions flip, as Pipecat's VAD controller sees them."""

    def __init__(self, stream: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stream = stream
        self._committed = VADState.QUIET

    async def analyze_audio(self, buffer: bytes) -> VADState:
        state = await super().analyze_audio(buffer)
        if state in (VADState.SPEAKING, VADState.QUIET) and state != self._committed:
            self._committed = state
            record(self._stream, "vad_start" if state == VADState.SPEAKING else "vad_stop")
        return state


class TranscriptProbe(FrameProcessor):
    """Notes when transcripts reach the user aggregator: Pipecat also starts a user turn
    (and interrupts the bot) on a transcript, not only on the VAD."""

    def __init__(self, stream: str) -> None:
        super().__init__()
        self._stream = stream

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterimTranscriptionFrame | TranscriptionFrame):
            record(self._stream, "transcript")
        await self.push_frame(frame, direction)


@app.get("/healthz")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@app.get("/metrics/loop")
async def loop_counters() -> JSONResponse:
    return JSONResponse(monitor.snapshot())


@app.post("/v1/carriers/twilio/answer")
async def answer(request: Request) -> Response:
    """TwiML connecting the call to the stream (the role of Pipecat's example server)."""
    host = request.headers.get("host", "127.0.0.1")
    agent = request.query_params.get("agent_id", "bench")
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="ws://{host}/ws"><Parameter name="agent_id" value="{agent}"/></Stream>'
        "</Connect></Response>"
    )
    return Response(content=twiml, media_type="application/xml")


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    _, call_data = await parse_telephony_websocket(websocket)
    stream = call_data["stream_id"]
    serializer = TwilioFrameSerializer(
        stream_sid=stream,
        call_sid=call_data["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    stt = DeepgramSTTService(
        api_key="bench",
        base_url=DEEPGRAM_URL,
        settings=DeepgramSTTService.Settings(endpointing=False, interim_results=True),
    )
    llm = OpenAILLMService(
        api_key="bench", base_url=OPENAI_URL,
        settings=OpenAILLMService.Settings(model="gpt-4o-mini", system_instruction=PROMPT),
    )
    tts = DeepgramTTSService(
        api_key="bench",
        base_url=DEEPGRAM_URL.replace("http", "ws", 1),
        settings=DeepgramTTSService.Settings(voice="aura-2-thalia-en"),
    )
    context = LLMContext()
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=ProbedSileroVAD(stream, params=VADParams(start_secs=0.1, stop_secs=0.3)),
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]
            ),
        ),
    )
    pipeline = Pipeline([
        transport.input(),
        stt,
        TranscriptProbe(stream),  # the benchmark's only addition to the pipeline
        user_aggregator,
        llm,
        tts,
        transport.output(),
        assistant_aggregator,
    ])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport: Any, _client: Any) -> None:
        await worker.queue_frames([TTSSpeakFrame(GREETING)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: Any, _client: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False, force_gc=True)  # as the example
    await runner.add_workers(worker)
    await runner.run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    import uvicorn

    print(f"pipecat bot listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", log_level="warning",
                ws_max_size=1 << 20)


if __name__ == "__main__":
    main()
