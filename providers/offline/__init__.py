"""Engines that run on this machine with no network and no key.

pocketsphinx (STT, model inside its wheel), espeak-ng (TTS, library and data inside the
``espeakng-loader`` wheel) and the playbook responder (LLM stand-in). Each module imports
its engine lazily, so importing this package is cheap.
"""
