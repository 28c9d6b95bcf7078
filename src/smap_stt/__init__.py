"""smap-stt: a self-hosted speech-to-text job service."""

__version__ = "0.1.0"
