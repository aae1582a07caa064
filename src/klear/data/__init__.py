"""Data: schemas and loading with clear errors, curation filters, dynamic sampling."""
