"""Typed keys of what the application holds, shared by the factory and the route modules."""

from __future__ import annotations

from aiohttp import web

from service.events.pipeline import Pipeline
from service.metrics import Metrics
from service.payloads import Limits
from service.refresher import Refresher
from service.replicas import RefreshBroadcast
from service.settings import Settings
from service.shell import Shell
from service.store import RulesStore
from service.visitors.recent import RecentExposures
from service.visitors.stores import VisitorStore
from service.webhooks import ReplayGuard

__all__ = [
    "BROADCAST",
    "LIMITS",
    "METRICS",
    "PIPELINE",
    "RECENT",
    "REFRESHER",
    "REPLAYS",
    "SETTINGS",
    "SHELL",
    "STORE",
    "VISITORS",
]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", RulesStore)
REFRESHER = web.AppKey("refresher", Refresher)
METRICS = web.AppKey("metrics", Metrics)
LIMITS = web.AppKey("limits", Limits)
PIPELINE = web.AppKey("pipeline", Pipeline)
SHELL = web.AppKey("shell", Shell)
VISITORS = web.AppKey("visitors", VisitorStore)
RECENT = web.AppKey("recent", RecentExposures)
REPLAYS = web.AppKey("replays", ReplayGuard)
BROADCAST = web.AppKey("broadcast", RefreshBroadcast)
