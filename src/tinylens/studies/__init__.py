"""Studies: one module per paper, each registered as a :class:`~tinylens.studies.framework.Study`.

A study is the only place that knows a paper: which task and models, which analyses and controls,
which figures, which claims to check. ``tinylens study NAME`` runs one end to end through
:func:`run_study`; ``tinylens study --list`` lists the registry. Adding a study is one module that
defines ``STUDY`` and one line below.
"""

from __future__ import annotations

from tinylens.studies import addition, inversion, maze, regions, seqcont
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import (
    STUDIES,
    Study,
    StudyContext,
    get_study,
    register,
    run_study,
)

register(addition.STUDY)
register(maze.STUDY)
register(seqcont.STUDY)
register(regions.STUDY)
register(inversion.STUDY)

__all__ = [
    # the registry and the runner
    "STUDIES",
    "get_study",
    "register",
    "run_study",
    # what a study module defines
    "Study",
    "StudyContext",
    "Claim",
    "Condition",
]
