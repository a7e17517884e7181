"""The agent configuration schema: what ``/v1/agents`` stores and the worker runs.

One pydantic model validates it everywhere (the local API answers 400 naming the wrong
field; a call for an invalid config fails with that reason), so the engine can trust it.
Durations are in milliseconds in the API, as users write them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProviderChoice(_Strict):
    """One engine by registry name, with its options."""

    provider: str = Field(min_length=1, max_length=64)
    model: str | None = Field(default=None, max_length=200)
    voice: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=32)
    options: dict[str, Any] = Field(default_factory=dict)


class ProviderRoute(ProviderChoice):
    """The primary engine and, in order, the ones to fail over to."""

    fallback: list[ProviderChoice] = Field(default_factory=list, max_length=5)

    def chain(self) -> list[ProviderChoice]:
        primary = ProviderChoice(
            provider=self.provider,
            model=self.model,
            voice=self.voice,
            language=self.language,
            options=self.options,
        )
        return [primary, *self.fallback]


class VadSettings(_Strict):
    aggressiveness: int = Field(default=2, ge=0, le=3)
    min_speech_ms: int = Field(default=100, ge=20, le=2000)
    min_silence_ms: int = Field(default=300, ge=60, le=5000)
    preroll_ms: int = Field(default=300, ge=0, le=2000)


class EndpointingSettings(_Strict):
    """How long after the user stops we wait before answering."""

    min_delay_ms: int = Field(default=400, ge=0, le=10_000)
    max_delay_ms: int = Field(default=3000, ge=0, le=30_000)

    @model_validator(mode="after")
    def _ordered(self) -> EndpointingSettings:
        if self.max_delay_ms < self.min_delay_ms:
            raise ValueError("max_delay_ms must be >= min_delay_ms")
        return self


class InterruptionSettings(_Strict):
    """Barge-in: what counts as the user interrupting the agent."""

    enabled: bool = True
    min_duration_ms: int = Field(default=400, ge=0, le=5000)
    min_words: int = Field(default=0, ge=0, le=20)
    resume_false_interruption: bool = True
    false_interruption_timeout_ms: int = Field(default=1500, ge=100, le=10_000)


class PlaybookIntent(_Strict):
    name: str = Field(min_length=1, max_length=64)
    keywords: list[str] = Field(min_length=1, max_length=50)
    reply: str = Field(min_length=1, max_length=2000)
    end_call: bool = False


class Playbook(_Strict):
    """Structured prompt: intents the offline responder answers, fields to extract."""

    intents: list[PlaybookIntent] = Field(default_factory=list, max_length=200)
    fallback_reply: str | None = Field(default=None, max_length=2000)
    extraction_fields: list[str] = Field(default_factory=list, max_length=50)


class ToolDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = Field(default="", max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=dict)


class AgentConfig(_Strict):
    """An agent as the worker runs it."""

    name: str = Field(default="Agent", min_length=1, max_length=200)
    role: Literal["inbound", "outbound", "both"] = "both"
    language: str = Field(default="en", max_length=32)
    prompt: str = Field(default="You are a helpful voice assistant.", max_length=50_000)
    first_message: str | None = Field(default=None, max_length=2000)
    stt: ProviderRoute = Field(default_factory=lambda: ProviderRoute(provider="pocketsphinx"))
    llm: ProviderRoute = Field(default_factory=lambda: ProviderRoute(provider="playbook"))
    tts: ProviderRoute = Field(default_factory=lambda: ProviderRoute(provider="espeak"))
    playbook: Playbook = Field(default_factory=Playbook)
    vad: VadSettings = Field(default_factory=VadSettings)
    endpointing: EndpointingSettings = Field(default_factory=EndpointingSettings)
    interruption: InterruptionSettings = Field(default_factory=InterruptionSettings)
    preemptive_generation: bool = True
    tools: list[ToolDefinition] = Field(default_factory=list, max_length=64)
    max_duration_s: int = Field(default=1800, ge=10, le=4 * 3600)
    silence_timeout_s: int = Field(default=60, ge=5, le=3600)
    recording_enabled: bool = True
    max_provider_silence_ms: int = Field(default=2000, ge=200, le=30_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


def default_agent() -> AgentConfig:
    """The agent that exists on first start of the embedded API."""
    return AgentConfig(
        name="Rymi front desk",
        prompt=(
            "You are the front desk of a small store. Answer questions about opening "
            "hours, location and orders in one or two short sentences."
        ),
        first_message="Hello! Thanks for calling. How can I help you today?",
        playbook=Playbook(
            intents=[
                PlaybookIntent(
                    name="hours",
                    keywords=["open", "opening", "hours", "time", "close", "tomorrow"],
                    reply=(
                        "We open at nine in the morning tomorrow, and we close at six in "
                        "the evening. Is there anything else I can help you with?"
                    ),
                ),
                PlaybookIntent(
                    name="location",
                    keywords=["where", "address", "located", "location", "find"],
                    reply="We are at twelve Main Street, next to the library.",
                ),
                PlaybookIntent(
                    name="booking",
                    keywords=["book", "table", "reserve", "reservation", "appointment"],
                    reply="I can book that for you. For what day and how many people?",
                ),
                PlaybookIntent(
                    name="goodbye",
                    keywords=["bye", "goodbye", "thanks", "thank"],
                    reply="You're welcome. Goodbye!",
                    end_call=True,
                ),
            ],
            fallback_reply="Sorry, I did not quite catch that. Could you say it again?",
            extraction_fields=["intent", "callback_number"],
        ),
    )
