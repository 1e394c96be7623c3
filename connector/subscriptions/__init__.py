"""Push-based intake: FHIR Subscriptions, the listener and its queue (`connector listen`)."""
