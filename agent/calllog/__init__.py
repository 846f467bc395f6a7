"""The call log: every call and turn in a database (SQLite by default, PostgreSQL by URL), and the
business reports computed from it (``voxroute report``)."""

from voxroute.agent.calllog.database import database_url, make_engine, migrate
from voxroute.agent.calllog.store import CallLog

__all__ = ["CallLog", "database_url", "make_engine", "migrate"]
