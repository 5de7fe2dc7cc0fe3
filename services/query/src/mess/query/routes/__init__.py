"""The HTTP routes of the query service, one module per resource."""
