"""Pure mappings from FHIR R4 resources (plain dicts) to warehouse rows.

Nothing in this package does I/O or reads the clock: a mapper takes a resource and a `MapContext`
and returns rows per table, or raises `MappingError` with a one-line reason that holds no resource values.
"""
