"""The CRM report (issue 15): KPIs, funnel, value tiers, satisfaction and a monitor of past
scores, computed in DuckDB from the lake and the score tables, rendered as one
self-contained HTML page plus the same numbers as JSON.

``kpis`` computes the lake's KPIs, ``scores`` reads the score tables (customer value
tiers, the score monitor), ``render`` draws the page and ``build`` puts it together,
writes it and logs it to MLflow. ``crmscore report`` (``pipelines/cli/report.py``) and
``GET /report`` (``serving/report.py``) are the two ways in.
"""
