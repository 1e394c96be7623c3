"""Writing back to the EMR: acknowledgment Tasks and metrics MeasureReports, through the outbox."""
