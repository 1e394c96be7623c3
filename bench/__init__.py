"""The benchmark harness of issue 11: a synthetic FHIR server, three loaders, one table of figures.

`make bench` (or `.venv/bin/python -m bench --help`). Modules: `data` (the seeded data set), `server`
(the FHIR server process), `floor`, `naive` and `connector_run` (the runners; `flat` is the floor's and
naive's row), `measure` (wall time and peak RSS of a child process tree), `prefect_api` (the Prefect
server the connector runs report to), `harness` (the runs) and `report` (figures, goals, tables).
"""
