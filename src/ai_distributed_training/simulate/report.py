"""A simulation's result: per simulated rank what it measured, its predicted step time and
the problems it would meet at that world size; as a table, JSON, a plot and an HTML page."""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..planner.counting import ModelCount
from ..planner.plan import human_bytes
from ..planner.profiles import HardwareProfile
from .predict import ASSUMPTIONS, StepTime
from .rank import RankFacts

#: Memory categories in the order the table shows them.
COLUMNS = (
    "parameters",
    "gathered parameters",
    "gradients",
    "optimizer state",
    "activations",
    "communication",
    "temporaries",
    "data",
)


@dataclass(frozen=True)
class SimulatedRank:
    """One rank at one world size: what it measured, its predicted step, its problems."""

    facts: RankFacts
    time: StepTime | None
    #: The tracked peak plus the profile's per-worker baseline (runtime, CUDA context).
    memory_needed_bytes: int
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        time = self.time
        return {
            **asdict(self.facts),
            "memory_needed_bytes": self.memory_needed_bytes,
            "compute_s": time.compute_s if time else None,
            "communication_s": time.communication_s if time else None,
            "step_s": time.step_s if time else None,
            "overlapped_step_s": time.overlapped_s if time else None,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class Simulation:
    """Every simulated rank, by world size then rank, with what the prediction rests on."""

    strategy: str
    model: ModelCount
    hardware: HardwareProfile
    global_batch: int
    ranks: list[SimulatedRank]
    #: World sizes the job's checks refuse, with the reason (nothing simulated there).
    refused: dict[int, str] = field(default_factory=dict)

    @property
    def world_sizes(self) -> list[int]:
        return sorted({r.facts.world_size for r in self.ranks})

    @property
    def problems(self) -> list[str]:
        """Every problem found, naming its world size and rank."""
        refused = [f"world {w}: refused before launch: {e}" for w, e in self.refused.items()]
        return refused + [
            f"world {r.facts.world_size}, rank {r.facts.rank}: {p}"
            for r in self.ranks
            for p in r.problems
        ]

    def needed_bytes(self) -> dict[int, int]:
        """Per world size simulated without error: the most memory a simulated rank needs
        (its peak and the worker's runtime)."""
        out: dict[int, int] = {}
        for r in self.ranks:
            if r.facts.error is None:
                world = r.facts.world_size
                out[world] = max(out.get(world, 0), r.memory_needed_bytes)
        return out

    def rank(self, world_size: int, rank: int) -> SimulatedRank:
        for r in self.ranks:
            if (r.facts.world_size, r.facts.rank) == (world_size, rank):
                return r
        raise KeyError(f"rank {rank} of world {world_size} was not simulated")

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.ranks]

    def table(self) -> str:
        """The per-rank table, the collectives of each world size, the problems, and the
        assumptions of the step time."""
        m = self.model
        lines = [
            f"simulated: strategy {self.strategy}, {m.parameters:,} parameters, global batch "
            f"{self.global_batch}; hardware: {self.hardware.name}",
            f"{'world':>6} {'rank':>5} {'samples':>7} {'peak mem':>9} "
            + " ".join(f"{_short(c):>9}" for c in COLUMNS)
            + f" {'padding':>8} {'ckpt':>9} {'colls':>5} {'comm MB':>9} {'step ms':>9} "
            f"{'overlap':>8}",
        ]
        for r in self.ranks:
            f, t = r.facts, r.time
            if f.error is not None:
                lines.append(f"{f.world_size:>6} {f.rank:>5}  failed: {f.error.splitlines()[0]}")
                continue
            memory = " ".join(f"{human_bytes(f.memory.get(c, 0)):>9}" for c in COLUMNS)
            sent = sum(b for _, b, _ in f.collectives) / 1e6
            lines.append(
                f"{f.world_size:>6} {f.rank:>5} {(f.samples or [0])[-1]:>7} "
                f"{human_bytes(f.memory.get('total', 0)):>9} {memory} "
                f"{human_bytes(f.padding_bytes):>8} {human_bytes(f.checkpoint_bytes):>9} "
                f"{len(f.collectives):>5} {sent:>9.1f} "
                f"{(t.step_s * 1e3 if t else 0):>9.2f} {(t.overlapped_s * 1e3 if t else 0):>8.2f}"
            )
        lines += ["collectives per step (first rank simulated of each world size):"]
        lines += [f"  {w:>6}: {self.collectives_text(w)}" for w in self.world_sizes]
        lines += [f"problem: {p}" for p in self.problems] or ["problems: none found"]
        lines += [f"assumed: {a}" for a in ASSUMPTIONS]
        return "\n".join(lines)

    def collectives_text(self, world_size: int) -> str:
        first = next(r for r in self.ranks if r.facts.world_size == world_size)
        kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for name, nbytes, _ in first.facts.collectives:
            kinds[name][0] += 1
            kinds[name][1] += nbytes
        return ", ".join(f"{n} {k} ({human_bytes(b)})" for k, (n, b) in kinds.items()) or "none"

    def plot(self, path: Path) -> Path:
        """A PNG of the largest peak memory and predicted step time over the ranks simulated,
        against world size."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        worlds = self.world_sizes
        ok = [r for r in self.ranks if r.facts.error is None]
        memory = [
            max((r.memory_needed_bytes for r in ok if r.facts.world_size == w), default=0)
            for w in worlds
        ]
        steps = [
            max((r.time.step_s for r in ok if r.facts.world_size == w and r.time), default=0)
            for w in worlds
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(worlds, [m / 2**30 for m in memory], "o-", label="peak memory / worker")
        ax.axhline(self.hardware.memory_bytes / 2**30, color="tab:red", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("world size (workers)")
        ax.set_ylabel("peak memory per worker (GiB)")
        right = ax.twinx()
        right.plot(worlds, [s * 1e3 for s in steps], "s--", color="tab:orange")
        right.set_ylabel("predicted step time (ms)", color="tab:orange")
        ax.set_title(f"{self.strategy} on {self.hardware.name.split(':')[0]}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save(self, directory: Path) -> Path:
        """``simulation.json``, ``simulation.png`` and ``simulation.html`` (the table and the
        plot) in ``directory``; returns the page's path."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "simulation.json").write_text(json.dumps(self.to_json(), indent=1))
        image = self.plot(directory / "simulation.png")
        png = base64.b64encode(image.read_bytes()).decode()
        page = directory / "simulation.html"
        page.write_text(
            "<!doctype html><meta charset='utf-8'><title>simulation</title>"
            "<h1>Simulated cluster</h1>"
            f"<img alt='memory and step time against world size' src='data:image/png;base64,{png}'>"
            f"<pre>{html.escape(self.table())}</pre>"
        )
        return page


def _short(category: str) -> str:
    return {
        "gathered parameters": "gathered",
        "optimizer state": "optimizer",
        "temporaries": "temp",
    }.get(category, category[:9])
