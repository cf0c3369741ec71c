"""Batch scoring: every active customer and open lead, with the champion, into score tables.

- ``job``: ``score`` / ``score_all`` (the local engine lives there; Spark in
  ``pipelines.spark_engine``), reconciliation, manifests, drift;
- ``predict``: the chunk predictor both engines run;
- ``inputs``: population and point-in-time features as of a date;
- ``table``: the partitioned score tables and their atomic replacement;
- ``nbp``: next-best-product lists for every customer;
- ``publish``: pushing a run into the Feast online store and PostgreSQL.

Nothing heavy is imported here; import the submodules.
"""
