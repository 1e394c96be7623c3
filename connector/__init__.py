"""Therapy-practice FHIR connector: pulls FHIR R4 data into a SQL warehouse and writes back."""

__version__ = "0.1.0"
