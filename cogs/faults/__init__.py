"""Network faults in the lab, checked by histories (issue 20).

* :mod:`cogs.faults.history` and :mod:`cogs.faults.check`: the history checker, pure
  (no Redis): what a run's histories, final states and alerts prove.
"""
