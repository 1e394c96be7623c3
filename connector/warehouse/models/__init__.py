"""Typed SQLAlchemy 2 models of the warehouse, one module per subject; importing this package registers
every table on `Base.metadata`.

Every resource row carries its natural key `(endpoint, resource_type, resource_id)`, the server's
`last_updated` and the `content_hash` of the resource, which is what the upsert compares to keep the newer
version (see `writer.upsert_rows`). Timestamps are stored and returned in UTC.

The schema is created by Alembic (`migrations/versions/`), never by `create_all`; a test checks that the
migrations and these models agree.
"""

import importlib
import pkgutil

from connector.warehouse.models import claims, payer, pushback, referrals
from connector.warehouse.models.base import NAMING_CONVENTION, Base, JSONType, UTCDateTime
from connector.warehouse.models.core import DeadLetter, RawResource, SyncRun, SyncState
from connector.warehouse.models.pushback import Acknowledgment, Outbox
from connector.warehouse.models.referrals import Referral

# Every module of this package is a subject's tables: import them all, so a new one registers by existing.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "NAMING_CONVENTION",
    "Acknowledgment",
    "Base",
    "DeadLetter",
    "JSONType",
    "Outbox",
    "RawResource",
    "Referral",
    "SyncRun",
    "SyncState",
    "UTCDateTime",
    "claims",
    "payer",
    "pushback",
    "referrals",
]
