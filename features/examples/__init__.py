"""Public credit data sets converted into the data contract (`scf-risk example NAME`): real
outcomes anyone can run the pipeline on. Each converter documents what it mapped and what it had to
synthesise, and writes that account (`conversion.md`) beside the tables."""
