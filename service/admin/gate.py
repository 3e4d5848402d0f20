"""What the admin API needs to gate an alias flip on an eval suite. The suite runner belongs to
`evaluation`, a layer above the service: `ragtune serve` (cli/main.py) passes it to
`create_app(..., suite_gate=...)`; an app built without one refuses `require_suite`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters.gating import GateVerdict
from ragtune.settings import Settings
from service.chat.service import ChatService
from service.hotswap.manager import AdapterManager
from service.routes.schemas import RouteSpec


@dataclass(frozen=True)
class GateServices:
    """The running server's own services a suite runs on (never a second app: embedded Qdrant
    belongs to one process)."""

    settings: Settings
    routes: dict[str, RouteSpec]
    adapters: AdapterManager
    chat: ChatService


class SuiteGate(Protocol):
    """Runs the suite at `suite` with `ref` served in place of `alias` (held loaded by
    `services.adapters.hold`) and says whether its gates hold."""

    async def __call__(
        self, suite: Path, alias: str, ref: str, services: GateServices
    ) -> GateVerdict: ...
