"""Runs: from a TOML spec to trained run folders.

`schema` holds the spec's keys and their checks (plain names only: loading a spec imports neither Numba,
SciPy nor matplotlib); `spec` loads a spec into runs (`Spec`, `RunSpec`) with their identities; `setup` builds
what one run needs (data, network, probes, batches); `runner` trains one run into its folder under a lease,
resuming from its checkpoint; `store` reads and writes run folders atomically; `leases` makes sure one process
trains a run; `executors` decide where runs execute (in this process, on Dask); `sweeps` reads learning-rate
sweeps; `progress` shows what runs are doing. Specs and runs know no figures; an executor knows runs only as
(run spec, run folder).
"""
