"""``tsuika recommend``: pick the method, the settings and a config that runs, from the data.

:func:`recommend` inspects the dataset (:mod:`.inspect`) and the model
(:mod:`.model`), looks everything up in one table of rules (:mod:`.rules`)
and returns a :class:`Decision`; :func:`write_config` writes it as a
commented TOML for ``tsuika train``.
"""

from .decide import Decision, Setting, recommend
from .errors import RecommendError
from .rules import PURPOSES
from .write import render_toml, summary_lines, write_config

__all__ = [
    "PURPOSES",
    "Decision",
    "RecommendError",
    "Setting",
    "recommend",
    "render_toml",
    "summary_lines",
    "write_config",
]
