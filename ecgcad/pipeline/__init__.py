"""The flow of one ECG: ingest (durable store + job), scoring, result building and delivery.

This package wires ``integration`` (formats, builders, senders), ``model`` (prediction), ``db`` and ``jobs``
together; those packages do not know about each other.
"""
