"""Development tools: the local stack, the embedded PostgreSQL cluster, the simulators' base.

A plain package, not a Django app, and never imported by production code: production settings
and modules live in `evoflow` and the apps, and only tooling for local runs, tests, demos and
benchmarks imports from here (devtools may import `evoflow`, never the reverse).
"""
