"""Open a built gym folder: the world, its gold scorer and the paths of its files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data.errors import DataSourceError
from alignlab.data.records import Messages
from alignlab.gym.gold import GoldResult, score
from alignlab.gym.world import World


@dataclass
class Gym:
    """A built gym: ``world``, ``info`` (the whole world.json) and ``score(prompt, response)``."""

    path: Path
    world: World
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def base_model_dir(self) -> Path:
        """The pretrained base model (an ordinary HF folder)."""
        return self.path / "base_model"

    @property
    def data_dir(self) -> Path:
        """The data/*.jsonl files."""
        return self.path / "data"

    def score(self, prompt: Messages, response: str) -> GoldResult:
        """Gold reward of ``response`` to ``prompt`` (see :mod:`alignlab.gym.gold`)."""
        return score(self.world, prompt, response)


def load_gym(path: str | Path) -> Gym:
    """Read ``path/world.json``; a missing or unreadable file is a clear error naming it."""
    root = Path(path)
    file = root / "world.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no gym here (build one with `alignlab gym build --out {root}`)")
    try:
        info = json.loads(file.read_text())
        world = World.from_dict(info["world"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        problem = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise DataSourceError(str(file), f"not a valid gym world file ({problem}); rebuild the gym "
                                         "with `alignlab gym build`") from None
    return Gym(path=root, world=world, info=info)
