"""The plan step of the reconcile skeleton: (spec, observed) -> what to build. Pure: no I/O.

One module per kind: `plan(...)` resolves the spec (platform defaults, validation) and everything else
the builders need from observed state (a ModelDeployment's adapters from the FineTuneJobs; whether a
FineTuneJob's Job may be created), once per reconcile. See handlers/reconcile.py for the whole skeleton.
"""
