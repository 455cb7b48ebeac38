"""The hash-chained decision record: canonical form, database connection, store, verification."""
