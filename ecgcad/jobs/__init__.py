"""Jobs: the ``JobQueue`` interface, its engines, the worker and the schedule."""

from __future__ import annotations

from ecgcad.jobs.queue import BackoffPolicy, ClaimedJob, JobQueue, SqlJobQueue
from ecgcad.jobs.worker import Worker

__all__ = ["BackoffPolicy", "ClaimedJob", "JobQueue", "SqlJobQueue", "Worker"]
