"""Network faults in the lab, checked by histories (issue 20).

* :mod:`cogs.faults.history` and :mod:`cogs.faults.check`: the history checker, pure
  (no Redis): what a run's histories, final states and alerts prove;
* :mod:`cogs.faults.load`: the load generator (StateProxy processes on middlebox
  hosts, every op in a history file);
* :mod:`cogs.faults.scenarios`: the faults, injected into a :class:`cogs.lab.Lab`;
* :mod:`cogs.faults.run`: one scenario start to verdict; :mod:`cogs.faults.collect`:
  the final states and alerts read back. ``cogs bench faults`` runs them all.
"""

from __future__ import annotations

#: the scenarios, in issue 20's order (cogs.faults.scenarios.SCENARIOS has them; a test checks both agree)
SCENARIO_NAMES = (
    "minority-primary", "host-cut", "discard-cut", "loss-jitter", "freeze-primary", "kill-primary",
    "cluster-restart", "owner-cut",
)  # fmt: skip
