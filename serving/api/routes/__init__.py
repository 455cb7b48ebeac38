"""The routes of the scoring API, one module per resource."""
