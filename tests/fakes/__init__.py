"""Local stand-ins for vendor APIs at the network edge (loopback only).

Each speaks its vendor's exact wire protocol so the real SDKs can be pointed at it:
:mod:`tests.fakes.deepgram_server`, :mod:`tests.fakes.openai_server`,
:mod:`tests.fakes.elevenlabs_server`. Benchmarks reuse them as providers of known delay.
"""
