"""Running a sync: what the flows compose.

- `pipeline`: one stream's fetch → map → write producer-consumer and its watermark policy;
- `bulk`: a Bulk $export backfill of several streams (kick-off, poll, download, load, DELETE);
- `windows`: splitting a large first load into `_lastUpdated` windows, and their search parameters;
- `endpoint`: the plan of one endpoint's run (which streams page, which export, which `_history` sweeps),
  the deletion sweep and the watermark of a windowed backfill.

Page mapping itself (validation, mappers, worker processes) is `connector.mapping_pool`.
"""
