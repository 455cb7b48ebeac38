"""The HTTP service: app factory, typed dependencies, security and keys, one router module per
resource, the auditor pages."""
