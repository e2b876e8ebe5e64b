"""How long-running library code reports progress without knowing about the terminal: the CLI
passes a Reporter (rich progress bars); library default is silent."""

from __future__ import annotations

__all__ = ["Reporter", "SILENT"]


class Reporter:
    def stage(self, name: str, detail: str = "") -> None:
        """A new stage starts (load, calibrate, export, verify...)."""

    def advance(self, name: str, done: int, total: int) -> None:
        """Progress inside a stage."""

    def info(self, message: str) -> None:
        """A line worth showing (warnings, fixes)."""


SILENT = Reporter()
