"""The Spark engine of the feature build: the same queries, transpiled, on a Spark session.

``crmscore features build --engine spark`` runs the very text of ``features/sql.py``:
each table's query is parsed as DuckDB SQL and written as Spark SQL by sqlglot
(``to_spark_sql``), over temp views of the same names as DuckDB's (one per lake table,
read with ``spark.read.parquet``, and the ``snap`` table from ``sql.snapshot_rows``).
There is no second copy of a feature: the queries keep to constructs both engines
mean the same way (``features/sql.py`` says which), and the few DuckDB function names
sqlglot does not map are mapped here, once (``_portable``).

What Spark computes: every query, i.e. all the joins and aggregations over the raw
events. What the driver computes, with the same code as the DuckDB build
(``features.build._finish``): the typing from the catalogue, the RFM scores
(``features.rfm``, one polars rank per snapshot) and the peer (``features.peer``, one
BG/NBD + Gamma-Gamma fit per snapshot). Their input is the customer-value query's
result, one row of a few columns per customer and snapshot, and running them where
DuckDB's build runs them keeps the two engines' values equal: the peer's optimizer
stops at a point that depends on the order of its rows, and its PyMC models are
compiled once per process (seconds), not once per Python worker.

The session helper is shared with the Spark engine of ``crmscore score``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from crmdata.contract import EVENT_TABLES, ORDERS
from crmdata.errors import CrmscoreError
from crmdata.lake import table_path
from features.sql import SqlContext, empty_orders_sql, snapshot_rows

if TYPE_CHECKING:
    import sqlglot.expressions as exp
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MASTER_ENV = "CRMSCORE_SPARK_MASTER"
#: The feature build's master when none is given or configured: two local cores.
DEFAULT_MASTER = "local[2]"
#: Rows per Arrow batch between the JVM and Python.
ARROW_BATCH_ROWS = 50_000
#: Heap of a local-mode JVM (driver and executors in one), unless SPARK_DRIVER_MEMORY says
#: otherwise: with Spark's 1 GiB default, collecting the customer table of a 100k world
#: failed (TaskResultLost: the task's result evicted from the block manager).
LOCAL_DRIVER_MEMORY = "4g"

# pyspark is an optional extra (crmscore[spark]) and brings a JVM: it is imported inside
# the functions that need it, so this module imports without it.


def require_pyspark() -> None:
    """A clear error, before any JVM starts, when pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise CrmscoreError("--engine spark needs pyspark: pip install 'crmscore[spark]' (and Java 17+)") from None
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None:
        raise CrmscoreError("--engine spark needs Java 17+: install a JDK (e.g. apt-get install "
                            "openjdk-17-jre-headless) or set JAVA_HOME")


def spark_session(master: str | None = None, app_name: str = "crmscore", fallback: str = "local[*]") -> SparkSession:
    """The active session, else a new one: ``master`` (or $CRMSCORE_SPARK_MASTER, or the
    cluster's own ``spark.master`` under spark-submit), else ``fallback``."""
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    # Executors must run this interpreter (with our dependencies), not whatever
    # `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    chosen = master or os.environ.get(MASTER_ENV)
    configured = os.environ.get("SPARK_HOME") or "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    if not chosen and not configured:
        chosen = fallback
    if chosen:
        builder = builder.master(chosen)
    if (chosen or "").startswith("local") and not os.environ.get("SPARK_DRIVER_MEMORY"):
        builder = builder.config("spark.driver.memory", LOCAL_DRIVER_MEMORY)
    builder = (
        # The queries compare epoch microseconds; the one date they format (a lead's
        # closing day) is a UTC date, as in DuckDB.
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
        # Parquet timestamps as Arrow/pandas/Feast read them (not legacy INT96).
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # the CLI has its own progress bar
        .config("spark.sql.shuffle.partitions", str(max(2, (os.cpu_count() or 2) * 2)))
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


#: DuckDB functions sqlglot's DuckDB reader leaves unparsed, and their meaning.
_FUNCTIONS = {"EPOCH_US": "UnixMicros"}


def _portable(node: exp.Expression) -> exp.Expression:
    import sqlglot.expressions as exp

    if isinstance(node, exp.Anonymous) and node.name.upper() in _FUNCTIONS:
        return getattr(exp, _FUNCTIONS[node.name.upper()])(this=node.expressions[0])
    if isinstance(node, exp.CTE) and node.args.get("materialized") is not None:
        # A planning hint for DuckDB; Spark plans CTEs itself.
        node.set("materialized", None)
    if isinstance(node, exp.Join) and "ASOF" in (node.args.get("method") or "").upper():
        raise CrmscoreError("feature SQL uses ASOF JOIN, which Spark has not: use the snapshot buckets")
    return node


def to_spark_sql(sql: str) -> str:
    """One feature query (DuckDB dialect) as Spark SQL. Raises on what Spark cannot run."""
    import sqlglot
    import sqlglot.expressions as exp

    tree = sqlglot.parse_one(sql, read="duckdb").transform(_portable)
    unknown = sorted({f.name for f in tree.find_all(exp.Anonymous)} - {"UNIX_MICROS"})
    if unknown:
        raise CrmscoreError(f"feature SQL calls DuckDB functions sqlglot does not translate: {', '.join(unknown)}")
    return tree.sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)


@dataclass
class SparkSqlContext(SqlContext):
    """``SqlContext`` over a Spark session (``con``): the same view names and snapshots."""

    @classmethod
    def open_spark(
        cls,
        spark: SparkSession,
        lake: Path,
        present: set[str],
        attributes: dict[str, dict[str, str]],
        snapshots: Sequence[datetime],
    ) -> SparkSqlContext:
        for name in EVENT_TABLES:
            # A reused session may hold a view of an earlier lake's table.
            spark.catalog.dropTempView(name)
        for name in present:
            spark.read.parquet(str(table_path(lake, name))).createOrReplaceTempView(name)
        if ORDERS.name not in present:
            spark.sql(to_spark_sql(empty_orders_sql())).createOrReplaceTempView(ORDERS.name)
        spark.createDataFrame(snapshot_rows(snapshots), "as_of BIGINT, prev_as_of BIGINT").createOrReplaceTempView(
            "snap")
        return cls(con=spark, present=present, attributes=attributes)

    def frame(self, sql: str) -> pl.DataFrame:
        frame = pl.from_arrow(self.con.sql(to_spark_sql(sql)).toArrow())
        assert isinstance(frame, pl.DataFrame)
        return frame
