"""`Record`: the base of edgesight's typed results and settings (dataclasses): `to_dict()` gives the
JSON-able form the CLI prints and the server returns."""
from __future__ import annotations

from dataclasses import asdict


class Record:
    def to_dict(self) -> dict:
        return asdict(self)
