"""Batch scoring: every active customer, open lead and customer, with the champion, into score tables.

Lowest first (each module imports only those above it):

- ``table``: the partitioned score tables, their atomic replacement, manifests;
- ``types``: what the parts hand each other (options, progress, an engine's result);
- ``predict``: the chunk predictor both engines run;
- ``inputs``: population and point-in-time features as of a date;
- ``local`` and ``spark``: the two engines of a binary model;
- ``nbp``: next-best-product lists for every customer;
- ``finish``: what every run does last (feature times, build stamp, drift report);
- ``migration``: the customer-value tier migration between two runs;
- ``value``: customer value (clv, interval, margin, tier) and its migration table;
- ``job``: ``score`` / ``score_all``: resolve, run an engine, reconcile, drift, manifest;
- ``publish``: pushing a run into the Feast online store and PostgreSQL.

Nothing heavy is imported here; import the submodules.
"""
