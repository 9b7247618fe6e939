"""The state one running simulator owns, kept in its Flask app; the blueprints (v2.py, admin.py)
reach it through :func:`state`."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from flask import current_app

from .auth import TokenRegistry
from .calls import CallLog
from .config import SimulatorConfig, apply_patch
from .faults import Faults
from .store import Store


class SimulatorState:
    """Everything one running simulator owns. The config is swapped whole, never mutated in place."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config.validate()
        self._config_lock = threading.Lock()
        self.store = Store(config.db)
        self.faults = Faults(config.seed)
        self.tokens = TokenRegistry()
        self.calls = CallLog()

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def reconfigure(self, patch: Any) -> SimulatorConfig:
        """Apply a camelCase patch; raises ValueError (and changes nothing) if any value is bad."""
        with self._config_lock:
            new = apply_patch(self._config, patch)
            if isinstance(patch, dict) and "seed" in patch:
                self.faults.reseed(new.seed)
            self._config = new
            return new

    def take_lost_answer(self, endpoint: str) -> bool:
        """Whether this call's answer is to be lost; takes one off ``lost_answers`` if so."""
        with self._config_lock:
            left = self._config.lost_answers.get(endpoint, 0)
            if left <= 0:
                return False
            lost = {**self._config.lost_answers, endpoint: left - 1}
            self._config = dataclasses.replace(self._config, lost_answers=lost)
            return True

    def take_throttle(self) -> float | None:
        """The Retry-After to answer this call with, if it is one of ``throttle_next``; takes one off."""
        with self._config_lock:
            if self._config.throttle_next <= 0:
                return None
            self._config = dataclasses.replace(self._config, throttle_next=self._config.throttle_next - 1)
            return self._config.throttle_retry_after

    def reset(self) -> None:
        self.store.reset()
        self.calls.clear()
        self.tokens.clear()
        self.faults.limiter.reset()


def state() -> SimulatorState:
    return current_app.extensions["simulator"]
