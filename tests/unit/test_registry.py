"""The provider registry: names to engines, errors that name the choices, the catalogue."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from pipelines.agent_config import AgentConfig, ProviderRoute, default_agent
from providers import registry
from providers.base import (
    PCM16_16K,
    AudioFormat,
    ConfigError,
    LlmProvider,
    SttProvider,
    SttStream,
    TtsProvider,
)
from providers.offline.espeak_tts import EspeakTts
from providers.offline.playbook_llm import PlaybookLlm
from providers.offline.pocketsphinx_stt import PocketsphinxStt


class RecordingStt:
    """A provider registered by a test, remembering what its factory was given."""

    name = "recording"
    gated = False

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def input_formats(self) -> Sequence[AudioFormat]:
        return (PCM16_16K,)

    async def open(self, fmt: AudioFormat, *, language: str) -> SttStream:
        raise NotImplementedError


@pytest.fixture
def recording() -> Iterator[None]:
    def factory(**kwargs: Any) -> SttProvider:
        return RecordingStt(**kwargs)

    registry.register_stt("recording", factory, languages=("en", "xx"), formats=(PCM16_16K,))
    try:
        yield
    finally:
        registry.unregister("stt", "recording")


def test_the_offline_engines_are_registered() -> None:
    assert "pocketsphinx" in registry.names("stt")
    assert "playbook" in registry.names("llm")
    assert "espeak" in registry.names("tts")


def test_creates_the_offline_engines_by_name() -> None:
    stt = registry.create_stt("pocketsphinx", language="en")
    book = default_agent().playbook.model_dump()
    llm = registry.create_llm("playbook", context={"playbook": book})
    tts = registry.create_tts("espeak", voice="en-us", language="en", options={"rate": 160})
    assert isinstance(stt, PocketsphinxStt) and isinstance(stt, SttProvider)
    assert isinstance(llm, PlaybookLlm) and isinstance(llm, LlmProvider)
    assert isinstance(tts, EspeakTts) and isinstance(tts, TtsProvider)
    assert (stt.name, llm.name, tts.name) == ("pocketsphinx", "playbook", "espeak")


def test_names_are_case_insensitive() -> None:
    assert isinstance(registry.create_tts(" eSpeak "), EspeakTts)


@pytest.mark.parametrize(
    ("kind", "create"),
    [("stt", registry.create_stt), ("llm", registry.create_llm), ("tts", registry.create_tts)],
)
def test_an_unknown_name_is_a_config_error_listing_the_known_ones(
    kind: registry.Kind, create: Callable[[str], object]
) -> None:
    with pytest.raises(ConfigError) as err:
        create("nonesuch")
    message = str(err.value)
    assert "nonesuch" in message
    for known in registry.names(kind):
        assert known in message


@pytest.mark.parametrize(
    "make",
    [
        lambda: registry.create_stt("pocketsphinx", language="fr"),
        lambda: registry.create_stt("pocketsphinx", model="de-de"),
        lambda: registry.create_stt("pocketsphinx", options={"hmm": "/etc"}),
        lambda: registry.create_stt("pocketsphinx", options={"partial_ms": 5}),
        lambda: registry.create_stt("pocketsphinx", options={"fwdflat": "yes"}),
        lambda: registry.create_llm("playbook", options={"temperature": 1}),
        lambda: registry.create_tts("espeak", options={"rate": 5000}),
        lambda: registry.create_tts("espeak", options={"speed": 1}),
        lambda: registry.create_tts("espeak", model="eleven_turbo"),
        lambda: registry.create_tts("espeak", options=["rate"]),  # type: ignore[arg-type]
    ],
)
def test_unusable_options_are_config_errors(make: Any) -> None:
    with pytest.raises(ConfigError):
        make()


def test_factories_get_every_argument(recording: None) -> None:
    provider = registry.create_stt(
        "recording", model="m1", language="xx", options={"a": 1}, credentials={"K": "v"}
    )
    assert isinstance(provider, RecordingStt)
    assert provider.kwargs == {
        "model": "m1", "language": "xx", "options": {"a": 1}, "credentials": {"K": "v"},
    }


def test_llm_factories_get_the_context() -> None:
    seen: dict[str, Any] = {}

    def factory(**kwargs: Any) -> LlmProvider:
        seen.update(kwargs)
        return PlaybookLlm.from_options(kwargs["context"], {})

    registry.register_llm("ctx-test", factory)
    try:
        registry.create_llm("ctx-test", model="x", context={"prompt": "p"})
    finally:
        registry.unregister("llm", "ctx-test")
    assert seen["context"] == {"prompt": "p"} and seen["model"] == "x"
    assert seen["options"] == {} and seen["credentials"] == {}


def test_a_name_cannot_be_registered_twice_unless_replaced(recording: None) -> None:
    def other(**kwargs: Any) -> SttProvider:
        return RecordingStt(other=True, **kwargs)

    with pytest.raises(ValueError, match="already registered"):
        registry.register_stt("recording", other)
    registry.register_stt("recording", other, replace=True)
    provider = registry.create_stt("recording")
    assert isinstance(provider, RecordingStt) and provider.kwargs["other"] is True


def test_unregister_removes_the_name(recording: None) -> None:
    registry.unregister("stt", "recording")
    with pytest.raises(ConfigError):
        registry.create_stt("recording")


def test_the_catalogue_describes_each_provider(recording: None) -> None:
    catalogue = registry.describe()
    assert set(catalogue) == {"stt", "llm", "tts"}
    stt = {p["name"]: p for p in catalogue["stt"]}
    assert stt["pocketsphinx"]["formats"] == ["pcm16@16000"]
    assert stt["pocketsphinx"]["languages"] == ["en", "en-us"]
    assert stt["pocketsphinx"]["offline"] is True
    assert stt["recording"]["formats"] == ["pcm16@16000"]
    assert stt["recording"]["offline"] is False
    espeak = next(p for p in catalogue["tts"] if p["name"] == "espeak")
    assert {"en-us", "de", "fr"} <= set(espeak["voices"])
    assert "en" in espeak["languages"]
    assert espeak["formats"] == ["pcm16@22050"]
    for items in catalogue.values():
        for item in items:
            assert set(item) >= {"name", "kind", "models", "voices", "languages", "formats"}


def test_languages_lists_providers_per_language(recording: None) -> None:
    langs = registry.languages()
    assert {"pocketsphinx", "recording"} <= set(langs["en"]["stt"])
    assert "espeak" in langs["en"]["tts"]
    assert langs["xx"] == {"stt": ["recording"], "llm": [], "tts": []}


def test_importing_the_registry_loads_no_engine() -> None:
    code = (
        "import sys, providers.registry as r; "
        "engines = ('pocketsphinx', 'espeakng_loader', 'openai', 'deepgram', 'elevenlabs'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in engines)); "
        "r.describe(); "
        "print('pocketsphinx' in sys.modules, 'libespeak' in open('/proc/self/maps').read())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, after_describe = out.stdout.splitlines()
    assert imported == "[]"
    assert after_describe == "False False", "the catalogue reads names, it loads no engine"


def test_runtime_builds_the_default_agent_through_the_registry() -> None:
    from runtime.providers import build_providers

    stt, llm, tts = build_providers(default_agent(), credentials={})
    assert (stt.name, llm.name, tts.name) == ("pocketsphinx", "playbook", "espeak")


def test_an_agent_naming_an_unknown_provider_fails_with_a_config_error() -> None:
    from runtime.providers import build_providers

    agent = AgentConfig(tts=ProviderRoute(provider="nonesuch"))
    with pytest.raises(ConfigError, match="espeak"):
        build_providers(agent, credentials={})


def test_credentials_are_passed_as_given(recording: None) -> None:
    creds: Mapping[str, str] = {"DEEPGRAM_API_KEY": "k"}
    provider = registry.create_stt("recording", credentials=creds)
    assert isinstance(provider, RecordingStt) and provider.kwargs["credentials"] is creds
