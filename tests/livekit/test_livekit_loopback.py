"""The test livekit-server and its clients stay on loopback: signalling, media and ICE."""

from __future__ import annotations

import ipaddress

import pytest

from tests.livekit.lkserver import LiveKitServer
from tests.livekit.netns import NetNs, proc_net_listeners
from tests.livekit.participant import Participant, token
from tests.support.speech import speech

pytestmark = pytest.mark.e2e


async def test_server_listens_on_loopback_only(livekit_server: LiveKitServer) -> None:
    sockets = proc_net_listeners(livekit_server.pid)
    assert ("tcp", "127.0.0.1", livekit_server.port) in sockets
    assert ("udp", "127.0.0.1", livekit_server.udp_port) in sockets
    for proto, address, port in sockets:
        assert ipaddress.ip_address(address).is_loopback, (proto, address, port)


async def test_media_flows_and_no_ice_candidate_names_another_address(
    livekit_server: LiveKitServer, in_netns: NetNs | None
) -> None:
    server = livekit_server
    alice = Participant(server.url, token(server.api_key, server.api_secret, "loop", "alice"))
    bob = Participant(server.url, token(server.api_key, server.api_secret, "loop", "bob"))
    await alice.join()
    await bob.join()
    try:
        alice.say(speech("testing the loopback path", rate=48000))
        heard = await bob.wait_for(lambda: bob.loud("alice"), 20, "bob to hear alice")
        assert heard

        for person in (alice, bob):
            candidates = await person.candidates()
            local = [c for c in candidates if c.side == "local"]
            remote = [c for c in candidates if c.side == "remote"]
            assert remote and {c.address for c in remote} == {"127.0.0.1"}, remote
            if in_netns is None:
                pytest.skip("no network namespace here: the client's host candidates use "
                            "the machine's interfaces (server side checked above)")
            assert local, "the client gathered candidates"
            others = [c for c in local if not c.is_loopback]
            assert others == [], f"candidates outside 127.0.0.0/8: {others}"
    finally:
        await alice.leave()
        await bob.leave()
