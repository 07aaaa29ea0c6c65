"""The decision as a commented TOML that ``tsuika train`` runs as written, and as text.

Each value is followed by its reason as a comment; the header says what was
inspected, which method was chosen and why, the problems found and the
combinations that help. Before the file is written the TOML is parsed back
with :func:`tsuika.config.load_config`'s parser, so a file that would not
load is never written; the write is atomic (:mod:`tsuika.atomic`).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tsuika.atomic import write_bytes_atomic
from tsuika.config import SECTIONS, ConfigError, config_from_dict

from .decide import Decision
from .errors import RecommendError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, int, float or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _comment(text: str, width: int = 96) -> list[str]:
    return textwrap.wrap(text, width - 2, initial_indent="# ", subsequent_indent="#   ")


def summary_lines(d: Decision) -> list[str]:
    """What was inspected, the method and why, problems, combinations and notes (plain text)."""
    f, m = d.dataset, d.model
    ident = f"{f.identifier!r} ({f.identifier_source})" if f.identifier else "none found"
    lines = [
        f"dataset: {f.root}: {f.images} pictures, {f.unique} after near-duplicate removal, "
        f"{f.samples_per_epoch} samples per epoch",
        f"  short sides {f.sizes['min']}..{f.sizes['max']} px (median {f.sizes['median']}), "
        f"buckets {', '.join(f'{b}: {n}' for b, n in f.buckets.items())}",
        f"  captions: {f.captioned} of {f.unique}, {f.caption_words:.1f} words on average; "
        f"identifier {ident} in {f.with_identifier}",
        f"model: {m.path or '(none)'}: {m.family}, {m.resolution} px ({m.source})",
        f"method: {d.method} (purpose {d.purpose}): {d.method_reason}",
    ]
    lines += [f"problem ({p['kind']}): {p['message']}" for p in d.problems]
    for c in d.combinations:
        pairs = " + ".join(f"{n} at {w:g}" for n, w in zip(c["methods"], c["weights"], strict=True))
        lines.append(f"combination: {pairs}: {c['reason']}")
    lines += [f"note: {n}" for n in d.notes]
    return lines


def render_toml(d: Decision) -> str:
    """The commented TOML of ``d``."""
    out = ["# Written by `tsuika recommend`; train with `tsuika train THIS_FILE`."]
    for line in summary_lines(d):
        out += _comment(line)
    for section in SECTIONS:
        rows = [s for s in d.settings if s.key.split(".", 1)[0] == section]
        if not rows:
            continue
        out += ["", f"[{section}]"]
        for s in rows:
            out += _comment(s.reason)
            out.append(f"{s.key.split('.', 1)[1]} = {toml_value(s.value)}")
    return "\n".join(out) + "\n"


def check_loads(text: str, path: Path) -> None:
    """Parse ``text`` as ``tsuika train`` will; a RecommendError when it would not load."""
    try:
        config_from_dict(tomllib.loads(text), base_dir=path.resolve().parent, source=path)
    except (tomllib.TOMLDecodeError, ConfigError, ValueError) as exc:
        raise RecommendError(f"{path}: the recommended config does not load: {exc}") from None


def write_config(d: Decision, path: str | Path) -> Path:
    """Write ``d`` as a commented TOML at ``path`` (atomically, after checking it loads)."""
    path = Path(path)
    text = render_toml(d)
    check_loads(text, path)
    return write_bytes_atomic(path, text.encode("utf-8"))
