"""LOACL: a self-hosted AI assistant for your website."""

from __future__ import annotations

__version__ = "0.1.0"
