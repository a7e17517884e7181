"""Carrier media streams (Twilio, Plivo, Vonage, Telnyx): pure codecs and request auth.

Everything in this package is sans-I/O: the WebSocket endpoints in
:mod:`runtime.transports.carriers` feed raw frames in and send what comes out.
"""
