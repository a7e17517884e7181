"""The playground in real headless Chromium, talking to a real `rymi-worker dev`.

Chromium's fake microphone plays an espeak-ng WAV (the question, after enough silence for
the greeting to finish); the worker recognises it with pocketsphinx, answers from the
default agent's playbook and speaks with espeak. The page must show the words, the reply,
play the reply's audio and draw the turn's latency waterfall. The unhappy paths (mic
denied, worker gone mid-call, a rejected save) are checked the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from pipelines.agent_config import default_agent
from tests.support.speech import require_tools

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RYMI_CHROMIUM", "/usr/bin/chromium")
QUESTION = "what time does the store open tomorrow"
QUESTION_WORDS = {"time", "store", "open", "tomorrow"}  # the playbook's "hours" keywords
BARGE_IN = "wait, what about on sunday"
LEAD_SILENCE_S = 5.0  # the greeting plays first; the fake microphone starts with getUserMedia
TAIL_SILENCE_S = 14.0  # Chromium loops the file: the reply must finish before the next question
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
]


@dataclass
class DevWorker:
    process: asyncio.subprocess.Process
    url: str
    api_key: str
    output: list[str]

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with aiohttp.ClientSession() as session, session.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def kill(self) -> None:
        """A crash, not a drain: the socket drops without an 'ended' message."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _read_url(process: asyncio.subprocess.Process, output: list[str]) -> str:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode(errors="replace"):
        output.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return match.group(1)
    raise RuntimeError("rymi-worker dev exited before listening:\n" + "".join(output))


async def _drain(process: asyncio.subprocess.Process, output: list[str]) -> None:
    """Keep the pipe empty so the worker never blocks on a full stdout."""
    assert process.stdout is not None
    while line := await process.stdout.readline():
        output.append(line.decode(errors="replace"))


@pytest.fixture
async def dev_worker(tmp_path: Path) -> AsyncIterator[DevWorker]:
    """`rymi-worker dev` as a user runs it, on a free port with its own data dir."""
    env = {**os.environ, "RYMI_DATA_DIR": str(tmp_path / "data"), "RYMI_LOG_LEVEL": "warning"}
    env.pop("RYMI_API_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime.cli", "dev", "--host", "127.0.0.1", "--port", "0",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        url = await asyncio.wait_for(_read_url(process, output), 60)
        drain = asyncio.create_task(_drain(process, output))
        # the page gets the dev key from config.json on loopback, and so does the test
        async with aiohttp.ClientSession() as session, session.get(
            f"{url}/playground/config.json"
        ) as resp:
            assert resp.status == 200
            config = await resp.json()
        assert config["apiKey"].startswith("rymi_")
        yield DevWorker(process, url, config["apiKey"], output)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain, 5)
        # pytest shows this only when the test failed
        print("---- rymi-worker dev output (tail) ----")
        print("".join(output[-80:]))


def speech_file(folder: Path, parts: list[tuple[float, str]], tail_s: float) -> Path:
    """A 48 kHz mono WAV: for each part, that much silence then the words (espeak-ng, sox)."""
    require_tools()
    pieces = []
    for i, (silence_s, text) in enumerate(parts):
        raw, padded = folder / f"raw{i}.wav", folder / f"part{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(padded),
                        "pad", str(silence_s), "0"], check=True)
        pieces.append(str(padded))
    wav = folder / "speech.wav"
    subprocess.run(["sox", *pieces, str(wav), "pad", "0", str(tail_s)], check=True)
    return wav


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The question, after enough silence for the greeting to finish."""
    return speech_file(tmp_path_factory.mktemp("speech"), [(LEAD_SILENCE_S, QUESTION)],
                       TAIL_SILENCE_S)


@pytest.fixture
def chromium_path() -> Iterator[str]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        raise RuntimeError(f"{CHROMIUM} not found: run scripts/setup/chromium.sh")
    yield CHROMIUM


@contextlib.asynccontextmanager
async def browser(
    profile: Path, chromium: str, flags: list[str]
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    """Debian's Chromium, headless, with a fresh profile; never a downloaded browser."""
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS + flags,
            viewport={"width": 1360, "height": 900},
            device_scale_factor=1,
        )
        page = context.pages[0] if context.pages else await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield context, page
        finally:
            await context.close()
        assert errors == [], f"uncaught errors in the page: {errors}"


async def data(page: Page, name: str) -> str:
    return str(await page.evaluate("(n) => document.body.dataset[n] || ''", name))


async def conversation(page: Page) -> list[list[str]]:
    """[role, turn, text] of every message on the page, for failure messages."""
    return list(await page.eval_on_selector_all(
        "#conversation .msg",
        "(ms) => ms.map((m) => [m.dataset.role, m.dataset.turn || '', m.textContent.trim()])",
    ))


async def wait_data(page: Page, name: str, value: str, timeout_s: float) -> None:
    await page.wait_for_function(
        "([n, v]) => document.body.dataset[n] === v", arg=[name, value], timeout=timeout_s * 1000
    )


async def test_one_turn_in_the_browser_shows_words_reply_audio_and_waterfall(
    dev_worker: DevWorker, speech_wav: Path, chromium_path: str, tmp_path: Path
) -> None:
    flags = ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech_wav}"]
    async with browser(tmp_path / "profile", chromium_path, flags) as (_, page):
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{dev_worker.url}/")
        button = page.locator("#call-button")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        assert await page.locator("#agent-select option").count() >= 1
        assert await page.locator("#worker-status[data-state=up]").count() == 1

        await button.click()
        await wait_data(page, "callState", "live", 30)
        assert await button.text_content() == "Hang up"

        # the greeting, then the question: the recognised words appear as the user's turn
        # (its number is whatever the worker gave it: a cough could have taken one before)
        try:
            turn = await page.wait_for_function(
                """(words) => {
                    for (const m of document.querySelectorAll("#conversation .msg.user.final")) {
                        const said = m.querySelector(".text").textContent.toLowerCase();
                        const hit = said.split(/\\s+/).some((w) => words.includes(w));
                        if (hit) return m.dataset.turn;
                    }
                    return null;
                }""",
                arg=sorted(QUESTION_WORDS),
                timeout=45_000,
            )
            turn_id = str(await turn.json_value())

            # the reply to it, as the agent speaks it: the playbook's answer about hours
            await page.wait_for_function(
                """(t) => /nine in the morning/.test(document.querySelector(
                    `#conversation .msg.agent[data-turn="${t}"] .text`)?.textContent || "")""",
                arg=turn_id,
                timeout=30_000,
            )
        except PlaywrightTimeout as exc:
            raise AssertionError(f"conversation so far: {await conversation(page)}") from exc

        # the waterfall of that turn has every stage, "first audio played" included
        card = f'#latency-turns .turn[data-turn="{turn_id}"]'
        played = page.locator(f'{card} li[data-stage="first_audio_played"]:not([data-ms=""])')
        await played.wait_for(timeout=45_000)
        stages = await page.eval_on_selector_all(
            f"{card} li",
            "(items) => Object.fromEntries(items.map((li) => [li.dataset.stage, li.dataset.ms]))",
        )
        assert set(stages) == {
            "speech_ended", "endpoint", "final_transcript", "llm_first_token",
            "tts_first_audio", "first_audio_out", "first_audio_played",
        }
        for stage in ("endpoint", "llm_first_token", "tts_first_audio", "first_audio_out",
                      "first_audio_played"):
            assert stages[stage] not in ("", None), (stage, stages)
        assert int(stages["first_audio_played"]) >= int(stages["first_audio_out"]) >= 0
        median = await page.locator("#v2v-median").get_attribute("data-ms")
        assert median and int(median) > 0
        assert "ms" in (await page.locator("#v2v-median").text_content() or "")

        # the agent's audio reached the page's output (measured after the worklet)
        assert int(await data(page, "framesPlayed")) >= 100  # >= 2 s of agent speech
        assert float(await data(page, "outputPeak")) > 0.01
        assert int(await data(page, "framesSent")) > 100

        await page.wait_for_timeout(300)
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        await page.screenshot(path=str(artifacts / "playground.png"), full_page=True)
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        if os.environ.get("RYMI_UPDATE_DOCS_SCREENSHOT"):  # refresh the README's picture
            shutil.copyfile(artifacts / "playground.png", ROOT / "docs" / "img" / "playground.png")

        await button.click()  # hang up
        await wait_data(page, "callState", "idle", 15)
        assert await data(page, "callOutcome") == "ended"
        assert "caller hangup" in (await page.locator("#call-status").text_content() or "")
        assert await page.locator("#banner").is_hidden()
        assert console_errors == []  # no failed request, no CSP violation


async def test_denied_microphone_is_explained(
    dev_worker: DevWorker, chromium_path: str, tmp_path: Path
) -> None:
    # no fake UI: the permission prompt is answered "deny"
    async with browser(tmp_path / "profile", chromium_path, ["--deny-permission-prompts"]) as (
        _, page,
    ):
        await page.goto(f"{dev_worker.url}/playground")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        await page.locator("#call-button").click()
        banner = page.locator('#banner[data-kind="mic-denied"]')
        await banner.wait_for(timeout=15_000)
        assert "denied" in (await banner.text_content() or "")
        assert await data(page, "callState") == "idle"
        assert await page.locator("#call-button").text_content() == "Start call"


async def test_worker_gone_mid_call_shows_dropped_then_unreachable(
    dev_worker: DevWorker, speech_wav: Path, chromium_path: str, tmp_path: Path
) -> None:
    flags = ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech_wav}"]
    async with browser(tmp_path / "profile", chromium_path, flags) as (_, page):
        await page.goto(f"{dev_worker.url}/")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        await page.locator("#call-button").click()
        await wait_data(page, "callState", "live", 30)

        await dev_worker.kill()
        dropped = page.locator('#banner[data-kind="dropped"]')
        await dropped.wait_for(timeout=15_000)
        assert "dropped" in (await dropped.text_content() or "")
        assert await page.locator("#banner-action").text_content() == "Reconnect"
        assert await data(page, "callOutcome") == "dropped"

        # the health check notices, and a reconnect attempt says why it cannot work
        await page.locator('#worker-status[data-state="down"]').wait_for(timeout=15_000)
        await page.locator("#banner-action").click()
        await page.locator('#banner[data-kind="unreachable"]').wait_for(timeout=15_000)
        assert "Cannot reach the worker" in (await page.locator("#banner").text_content() or "")


async def test_agent_settings_are_saved_through_the_api(
    dev_worker: DevWorker, chromium_path: str, tmp_path: Path
) -> None:
    async with browser(tmp_path / "profile", chromium_path, []) as (_, page):
        await page.goto(f"{dev_worker.url}/")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        agent_id = await page.locator("#agent-select").input_value()

        await page.fill("#f-prompt", "You are a terse store clerk.")
        await page.fill("#f-first-message", "Store, hi.")
        await page.select_option("#f-voice", "en-us")  # the menu lists the engine's voices
        await page.uncheck("#f-int-enabled")
        await page.fill("#f-int-duration", "600")
        await page.click("#save-button")
        await page.locator('#save-status[data-state="saved"]').wait_for(timeout=10_000)

        status, agent = await dev_worker.api("GET", f"/v1/agents/{agent_id}")
        assert status == 200, agent
        assert agent["prompt"] == "You are a terse store clerk."
        assert agent["first_message"] == "Store, hi."
        assert agent["tts"]["voice"] == "en-us"
        assert agent["tts"]["provider"] == "espeak"  # the rest of the route is kept
        assert agent["interruption"]["enabled"] is False
        assert agent["interruption"]["min_duration_ms"] == 600
        assert agent["playbook"]["intents"], "fields the form does not edit are untouched"

        # an invalid value: the API's reason is shown, nothing is saved
        await page.fill("#f-int-duration", "999999")
        await page.click("#save-button")
        error = page.locator('#save-status[data-state="error"]')
        await error.wait_for(timeout=10_000)
        assert "not saved" in (await error.text_content() or "")
        _, agent = await dev_worker.api("GET", f"/v1/agents/{agent_id}")
        assert agent["interruption"]["min_duration_ms"] == 600


async def test_barge_in_is_marked_where_it_happened(
    dev_worker: DevWorker, chromium_path: str, tmp_path: Path
) -> None:
    # the question, then, while the reply plays, the caller talks over it
    wav = speech_file(tmp_path, [(LEAD_SILENCE_S, QUESTION), (3.5, BARGE_IN)], 20.0)
    flags = ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    async with browser(tmp_path / "profile", chromium_path, flags) as (_, page):
        await page.goto(f"{dev_worker.url}/")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        await page.locator("#call-button").click()
        await wait_data(page, "callState", "live", 30)

        cut = page.locator('#conversation .msg.agent.interrupted[data-turn="2"]')
        await cut.wait_for(timeout=60_000)
        badge = await cut.locator(".badge").text_content() or ""
        assert re.fullmatch(r"interrupted after \d+\.\d s", badge), badge
        # what was heard stays, what was never played is struck through
        await cut.locator(".unheard").wait_for(timeout=15_000)
        heard = (await cut.locator(".text").evaluate("(p) => p.firstChild.textContent")).strip()
        unheard = (await cut.locator(".unheard").text_content() or "").strip()
        # heard + unheard is one whole reply of the agent (recognition may miss the
        # question, and then the fallback reply is the one cut)
        agent = default_agent()
        replies = {" ".join(i.reply.split()) for i in agent.playbook.intents}
        replies.add(" ".join((agent.playbook.fallback_reply or "").split()))
        assert heard and unheard and " ".join(f"{heard} {unheard}".split()) in replies
        assert int(await data(page, "clears")) >= 1  # the worklet's buffer was dropped

        # the barge-in is the next user turn, after the cut reply
        roles = await page.eval_on_selector_all(
            "#conversation .msg", "(ms) => ms.map((m) => [m.dataset.role, m.dataset.turn || ''])"
        )
        cut_at = roles.index(["agent", "2"])
        assert [role for role, _ in roles[cut_at + 1 :]][:1] == ["user"], roles
        await page.screenshot(path=str(ROOT / "test-artifacts" / "playground-barge-in.png"),
                              full_page=True)


async def test_failed_call_shows_the_reason(
    dev_worker: DevWorker, speech_wav: Path, chromium_path: str, tmp_path: Path
) -> None:
    # an agent whose voice engine does not exist: the worker refuses the call with why
    status, body = await dev_worker.api("GET", "/v1/agents")
    assert status == 200
    agent_id = body["agents"][0]["id"]
    status, body = await dev_worker.api(
        "PUT", f"/v1/agents/{agent_id}", {"tts": {"provider": "no-such-engine"}}
    )
    assert status == 200, body
    flags = ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech_wav}"]
    async with browser(tmp_path / "profile", chromium_path, flags) as (_, page):
        await page.goto(f"{dev_worker.url}/")
        await page.locator("#call-button:not([disabled])").wait_for(timeout=15_000)
        await page.locator("#call-button").click()
        banner = page.locator('#banner[data-kind="call-failed"]')
        await banner.wait_for(timeout=30_000)
        text = await banner.text_content() or ""
        assert "The call failed: setup_failed" in text and "no-such-engine" in text, text
        assert await data(page, "callOutcome") == "failed"
        assert await data(page, "callState") == "idle"
        assert await page.locator("#banner-action").text_content() == "Try again"


async def test_waterfall_arithmetic_in_the_page(
    dev_worker: DevWorker, chromium_path: str, tmp_path: Path
) -> None:
    """metrics.js as the browser runs it: steps, overlaps, missing marks, medians."""
    async with browser(tmp_path / "profile", chromium_path, []) as (_, page):
        await page.goto(f"{dev_worker.url}/")
        result = await page.evaluate(
            """async () => {
                const m = await import("/playground/static/metrics.js");
                const marks = {speech_ended: 10, endpoint: 10.4, final_transcript: 10.3,
                               llm_first_token: 10.5, tts_first_audio: null,
                               first_audio_out: 10.75, first_audio_played: 10.8};
                return {
                    rows: m.timeline(marks).map((r) => [r.key, r.ms, r.deltaMs]),
                    greeting: m.timeline({speech_ended: null, first_audio_out: 1}),
                    medians: [m.median([3, 1, 2]), m.median([4, 1, 3, 2]), m.median([null])],
                };
            }"""
        )
    rows = {key: (ms, delta) for key, ms, delta in result["rows"]}
    assert rows["speech_ended"] == (0, 0)
    assert rows["endpoint"] == pytest.approx((400, 400))
    assert rows["final_transcript"] == pytest.approx((300, -100))  # before the endpoint
    assert rows["llm_first_token"] == pytest.approx((500, 200))
    assert rows["tts_first_audio"] == (None, None)  # missing: the next step spans it
    assert rows["first_audio_out"] == pytest.approx((750, 250))
    assert rows["first_audio_played"] == pytest.approx((800, 50))
    assert result["greeting"] is None  # no end of speech: not a user turn
    assert result["medians"] == [2, 2.5, None]
