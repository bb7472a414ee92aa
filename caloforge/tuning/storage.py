"""Where a study lives: Optuna storages from one ``--storage`` string, with one-line errors.

* nothing: ``sqlite:///DIR/study.db`` — embedded, one machine (a few workers on it);
* ``sqlite:///path.db``, ``postgresql://user:pw@host/db``, ``mysql+pymysql://…`` — an
  SQLAlchemy URL (Optuna's RDB storage).  PostgreSQL is the choice for many workers
  on many machines (install a driver: ``pip install 'psycopg[binary]'``, SQLAlchemy's default).  Workers
  send a heartbeat; a trial whose worker died (killed batch job) is marked failed after
  3 minutes and retried once by the next worker, which resumes its run directories;
* ``journal:PATH`` (or a path ending ``.journal``/``.log``) — Optuna's journal file,
  an append-only log that many processes, also on several machines sharing a file
  system (NFS), can use without a database server.  Optuna keeps no heartbeat there:
  caloforge's workers write their own (:func:`caloforge.tuning.study.recover_stale_trials`),
  so a dead worker's trial is retried there too.

>>> describe_storage("postgresql://physicist:secret@db.example.org/tune")
'postgresql://physicist:***@db.example.org/tune'
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

from caloforge.errors import ConfigError

__all__ = ["open_storage", "describe_storage", "default_storage_url"]

def _seconds(name: str, default: float) -> float:
    """A duration from the environment (tests and impatient operators shorten the heartbeat)."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# a worker's trials send a heartbeat; one silent for GRACE_S is taken for dead, failed and retried once
HEARTBEAT_S = _seconds("CALOFORGE_TUNE_HEARTBEAT_S", 60)
GRACE_S = _seconds("CALOFORGE_TUNE_GRACE_S", 180)
_JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


def default_storage_url(output: str | Path) -> str:
    return f"sqlite:///{Path(output).resolve() / 'study.db'}"


def describe_storage(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", str(url))


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):].removeprefix("//"))
    if "://" not in url and url.endswith(_JOURNAL_SUFFIXES):
        return Path(url)
    return None


def _serialise_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 driver begins a transaction only at the first write, so Optuna's
    read-check-write when a worker pops an enqueued trial (``SELECT … FOR UPDATE``, which
    SQLite ignores) lets two workers both see the trial WAITING and both run it; the second
    then fails with "Cannot tell a COMPLETE trial" (optuna/optuna#4002, #4621).  With the
    lock taken at BEGIN, the read and the write of one transaction are atomic.  This is
    SQLAlchemy's documented recipe for pysqlite; the 60 s busy timeout makes waiting workers
    queue instead of failing.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_does_not_begin(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the tables were created predate the listeners


def open_storage(url: str):
    """An Optuna storage for ``url``; ConfigError (one line) when it cannot be used."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    shown = describe_storage(url)
    journal = _journal_path(url)
    if journal is not None:
        if not journal.parent.is_dir():
            raise ConfigError(f"--storage {shown}: cannot open the journal file (no directory {journal.parent})")
        try:
            return JournalStorage(JournalFileBackend(str(journal)))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--storage {shown}: cannot open the journal file ({exc})") from None
    if "://" not in url:
        raise ConfigError(f"--storage {shown}: expected a database URL (sqlite:///DIR/study.db, "
                          "postgresql://user@host/db) or a journal file (journal:/shared/study.journal)")
    engine_kwargs = {}
    db = url.split(":///", 1)[-1] if url.startswith("sqlite:") else None
    sqlite_file = db not in (None, "", ":memory:")  # a database file that several workers may share
    if db is not None:
        if sqlite_file and not Path(db).parent.is_dir():
            raise ConfigError(f"--storage {shown}: cannot open the database (no directory {Path(db).parent})")
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers wait for the write lock
    try:
        for attempt in range(4):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the heartbeat API is marked experimental
                    storage = RDBStorage(url, engine_kwargs=engine_kwargs,
                                         heartbeat_interval=max(1, int(HEARTBEAT_S)),
                                         grace_period=max(2, int(GRACE_S)),
                                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
                if sqlite_file:
                    _serialise_sqlite_transactions(storage.engine)
                return storage
            except ImportError:
                raise
            except Exception:  # workers starting together race to create the tables: the loser retries
                if attempt == 3:
                    raise
                time.sleep(1.0 + attempt)
    except ImportError as exc:
        raise ConfigError(f"--storage {shown}: the database driver is not installed ({exc}); e.g. "
                          "pip install 'psycopg[binary]' for PostgreSQL") from None
    except Exception as exc:  # SQLAlchemy's errors (unreachable host, bad credentials, bad URL)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"\(Background on this error.*", "", first).strip()
        raise ConfigError(f"--storage {shown}: cannot connect ({describe_storage(first)[:300]})") from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
