"""Turn an agent's provider routes into engine instances, with failover when configured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipelines.agent_config import AgentConfig, ProviderChoice
from providers import registry
from providers.base import LlmProvider, SttProvider, TtsProvider

FailoverCallback = Callable[[str, str, str, str], None]


def _llm_context(agent: AgentConfig) -> dict[str, Any]:
    return {
        "prompt": agent.prompt,
        "first_message": agent.first_message,
        "playbook": agent.playbook.model_dump(),
    }


def _stt(choice: ProviderChoice, agent: AgentConfig, creds: Mapping[str, str]) -> SttProvider:
    return registry.create_stt(
        choice.provider,
        model=choice.model,
        language=choice.language or agent.language,
        options=choice.options,
        credentials=creds,
    )


def _llm(choice: ProviderChoice, agent: AgentConfig, creds: Mapping[str, str]) -> LlmProvider:
    return registry.create_llm(
        choice.provider,
        model=choice.model,
        options=choice.options,
        credentials=creds,
        context=_llm_context(agent),
    )


def _tts(choice: ProviderChoice, agent: AgentConfig, creds: Mapping[str, str]) -> TtsProvider:
    return registry.create_tts(
        choice.provider,
        model=choice.model,
        voice=choice.voice,
        language=choice.language or agent.language,
        options=choice.options,
        credentials=creds,
    )


def warm_providers(credentials: Mapping[str, str]) -> list[str]:
    """Import the cloud SDKs the operator configured (``*_API_KEY``) and build their
    shared clients now, at worker start, instead of in the first call (~0.7 s there).

    Run it on the worker's event loop, before calls are accepted; returns the vendors
    warmed (none for an offline-only worker).
    """
    from providers.cloud import warm_cloud_providers

    return warm_cloud_providers(credentials)


def build_providers(
    agent: AgentConfig,
    *,
    credentials: Mapping[str, str],
    on_failover: FailoverCallback | None = None,
) -> tuple[SttProvider, LlmProvider, TtsProvider]:
    """The primary engine of each route, wrapped in a failover chain when it has fallbacks.

    Raises ``ConfigError`` for an unknown provider name or unusable options.
    """
    stt_chain = [_stt(c, agent, credentials) for c in agent.stt.chain()]
    llm_chain = [_llm(c, agent, credentials) for c in agent.llm.chain()]
    tts_chain = [_tts(c, agent, credentials) for c in agent.tts.chain()]
    if len(stt_chain) == len(llm_chain) == len(tts_chain) == 1:
        return stt_chain[0], llm_chain[0], tts_chain[0]
    from providers import failover  # only calls with fallbacks pay for it

    # an engine silent for longer than this is replaced by the next one
    limit = {"silence_timeout_s": agent.max_provider_silence_ms / 1000}
    return (
        stt_chain[0]
        if len(stt_chain) == 1
        else failover.FailoverStt(stt_chain, on_failover, **limit),
        llm_chain[0]
        if len(llm_chain) == 1
        else failover.FailoverLlm(llm_chain, on_failover, **limit),
        tts_chain[0]
        if len(tts_chain) == 1
        else failover.FailoverTts(tts_chain, on_failover, **limit),
    )
