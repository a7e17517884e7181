"""A call whose speech recognizer drops mid-utterance still hears every word.

The worker runs in-process with the embedded /v1 API and the local /v1/stream socket. The
agent's STT route is Deepgram, pointed (through the worker's ``DEEPGRAM_BASE_URL``) at the
local Deepgram protocol server, which cuts the connection halfway through the caller's
question; the fallback is a second Deepgram endpoint. The caller speaks real (espeak-ng)
speech in real time. The fake recognizer hears one word per ``word_ms`` of speech, chosen
so that only the *whole* utterance yields every word: the full transcript proves the
audio before the drop was replayed to the fallback.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime.server import Worker
from runtime.settings import WorkerSettings
from tests.fakes._base import Faults
from tests.fakes.deepgram_server import FakeDeepgramServer, speech_ms
from tests.support.speech import speech
from tests.support.stream_client import StreamCaller

pytestmark = pytest.mark.e2e

QUESTION = "what time does the store open tomorrow"


async def api(worker: Worker, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"{worker.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {worker.api_key}"},
        ) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def test_stt_drop_mid_utterance_is_completed_by_the_fallback(tmp_path: Path) -> None:
    audio = speech(QUESTION)
    words = len(QUESTION.split())
    word_ms = speech_ms(audio) // words  # the whole question = every word, no more
    preroll_ms = 300
    async with (
        FakeDeepgramServer(
            utterances=[QUESTION],
            word_ms=word_ms,
            drop_after_ms=preroll_ms + speech_ms(audio) / 2,  # halfway through the question
            faults=Faults(drop_times=1),
        ) as primary,
        FakeDeepgramServer(utterances=[QUESTION], word_ms=word_ms) as backup,
    ):
        settings = WorkerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path / "data",
            deepgram_api_key="dg-worker-key-0123",
            deepgram_base_url=primary.base_url,
        )
        worker = Worker(settings, embedded_api=True)
        await worker.start()
        try:
            agent = await api(
                worker,
                "POST",
                "/v1/agents",
                {
                    "name": "failover test",
                    "first_message": None,
                    "stt": {
                        "provider": "deepgram",
                        "fallback": [
                            {
                                "provider": "deepgram",
                                "options": {"base_url": backup.base_url, "name": "deepgram-backup"},
                            }
                        ],
                    },
                    "vad": {"preroll_ms": preroll_ms, "min_silence_ms": 600},
                },
            )
            url = f"{worker.url.replace('http', 'ws')}/v1/stream"
            async with StreamCaller(url, worker.api_key, agent["id"]) as caller:
                call_id = caller.call_id
                await asyncio.sleep(0.5)
                caller.say(audio)
                await caller.wait_event("agent.speech_started", 30)
                users = [s for s in caller.transcripts() if s["role"] == "user"]
                await caller.hang_up()
                await asyncio.wait_for(caller.ended.wait(), 10)

            assert users and users[0]["text"] == QUESTION  # every word, none twice
            assert primary.requests[0].headers["authorization"] == "Token dg-worker-key-0123"
            # the agent-chosen fallback endpoint never sees the worker's key
            assert "dg-worker-key-0123" not in backup.requests[0].headers["authorization"]

            deadline = time.monotonic() + 15
            while True:
                events = (await api(worker, "GET", f"/v1/calls/{call_id}/events"))["events"]
                switches = [e["data"] for e in events if e["type"] == "provider.failover"]
                if switches or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert len(switches) == 1
            switch = switches[0]
            assert (switch["kind"], switch["from"], switch["to"]) == (
                "stt",
                "deepgram",
                "deepgram-backup",
            )
            assert "dropped" in switch["reason"]
            assert "dg-worker-key-0123" not in str(events)
        finally:
            await worker.stop(drain_timeout=5)
