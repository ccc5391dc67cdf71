"""What a bench part returns (a table, notes, plot panels) and how it becomes RESULTS.md and a PNG."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .. import __version__, num_threads, simd_level
from ..demo import Vectors, load_vectors

#: Where a peer that is not installed comes from.
PEER_HINT = "pip install 'turboquant-rs[bench]'"
TITLE = "# turboquant-rs bench results"
INTRO = (
    "Written by `turboquant-rs bench`; each section says how, where and when it was measured, and "
    "`turboquant-rs bench --only NAME` rewrites that section alone."
)


@dataclass
class Options:
    """What every part is run with: ``quick`` (smaller sizes), ``quiet`` (no progress bars),
    ``data`` (vectors for distortion and search; None: ../shared's wiki_minilm or the shipped sample),
    ``threads`` (as set, for the tables)."""

    quick: bool = False
    quiet: bool = False
    data: Path | None = None
    threads: int = 0


@dataclass
class Line:
    """One series of a plot panel (``fmt``: a matplotlib format string)."""

    label: str
    x: list[float]
    y: list[float]
    fmt: str = "o-"


@dataclass
class Panel:
    """One set of axes."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    logx: bool = False
    logy: bool = False
    xticks: list[float] | None = None


@dataclass
class Section:
    """The result of one bench part: a markdown table, notes under it, and the panels of its plot
    (none: no plot, e.g. a skipped part)."""

    name: str
    title: str
    about: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    machine: str = ""


def version_of(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def missing(what: str) -> str:
    """The note for a peer that is not installed."""
    return f"{what}: not installed ({PEER_HINT})"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_machine() -> str:
    """CPU model, cores, the Rust threads and SIMD level in use, OS."""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {num_threads()} Rust threads, SIMD {simd_level()}, "
        f"{platform.system()} {platform.release()}"
    )


def _versions(packages: list[str]) -> str:
    found = [f"turboquant-rs {__version__}", f"Python {platform.python_version()}"]
    for p in ["numpy", *packages]:
        v = version_of(p)
        if v is not None:
            found.append(f"{p} {v}")
    return ", ".join(found)


def render(section: Section, command: str, plotted: bool) -> str:
    """The section's markdown block, between markers that let a later run replace it."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"<!-- bench:{section.name} -->",
        f"## {section.title}",
        "",
        section.about,
        "",
        f"Command: `{command}` · machine: {section.machine or cpu_machine()} · {date} · "
        f"{_versions(section.packages)}",
        "",
    ]
    if section.rows:
        out.append("| " + " | ".join(section.header) + " |")
        out.append("|" + "|".join("---:" if i else "---" for i in range(len(section.header))) + "|")
        out += ["| " + " | ".join(r) + " |" for r in section.rows]
        out.append("")
    out += [f"- {n}" for n in section.notes]
    if section.notes:
        out.append("")
    if plotted:
        out += [f"![{section.title}]({section.name}.png)", ""]
    elif section.panels:
        out += [f"(No plot: matplotlib is not installed; {PEER_HINT} adds it.)", ""]
    out.append(f"<!-- /bench:{section.name} -->")
    return "\n".join(out)


_BLOCK = re.compile(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->", re.S)


def merge(existing: str, blocks: dict[str, str], order: list[str]) -> str:
    """RESULTS.md text: the sections of ``existing`` with those in ``blocks`` replaced or added, in
    ``order`` (sections of unknown names kept at the end)."""
    kept = {m.group(1): m.group(0) for m in _BLOCK.finditer(existing)}
    kept.update(blocks)
    names = [n for n in order if n in kept] + [n for n in kept if n not in order]
    return "\n\n".join([TITLE, INTRO, *(kept[n] for n in names)]) + "\n"


def plot(section: Section, path: Path) -> bool:
    """Draw ``section``'s panels into ``path`` (PNG, 100 dpi); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = len(section.panels)
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 4.2), squeeze=False)
    for ax, panel in zip(axes[0], section.panels, strict=True):
        for line in panel.lines:
            ax.plot(line.x, line.y, line.fmt, label=line.label, markersize=4, linewidth=1.4)
        if panel.logx:
            ax.set_xscale("log", base=2)
        if panel.logy:
            ax.set_yscale("log")
        if panel.xticks is not None:
            ax.set_xticks(panel.xticks)
            ax.set_xticklabels([f"{t:g}" for t in panel.xticks])
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


#: Where ``bench`` looks for the full wiki-MiniLM set (77,573 × 384) before the shipped sample.
SHARED_WIKI = (Path("shared/data/wiki_minilm"), Path("../shared/data/wiki_minilm"))


@functools.lru_cache(maxsize=2)
def _vectors(data: Path | None, quick: bool) -> Vectors:
    if data is None:
        data = next((p for p in SHARED_WIKI if (p / "base_f16.npy").is_file()), None)
    v = load_vectors(data, 20_000 if quick else None)
    return Vectors(v.base, v.queries[: 200 if quick else 1000], v.what)


def bench_vectors(opts: Options) -> Vectors:
    """Vectors for distortion and search: ``opts.data``, else ../shared's wiki-MiniLM when present,
    else the shipped sample; ``quick`` keeps 20,000 base vectors and 200 queries at most."""
    return _vectors(opts.data, opts.quick)
