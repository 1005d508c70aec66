"""What the events pipeline records of a visitor, decided from the visitor store in batches.

Before queued events become records, the pipeline hands them here (``VisitorScreen``, the
events package's ``Screen``). One store read per batch (one Redis round trip for all its
visitors) gives each visitor's profile, and then:

- a bot's events are dropped (``BotJudge``: the stored user agent, else the request's);
- without consent where consent is required, experiment exposures are dropped, and what is
  kept (conversions, targeted-delivery exposures) carries no attributes, user agent or
  referer; when the store cannot answer, no visitor counts as having consented;
- otherwise decision records carry the visitor's stored attributes (browser, device,
  operating system, country, custom data) besides the request's context;
- a visitor code linked to a user id is recorded under the user id.

Each event left out is counted in ``flagpost_events_filtered_total{reason}``. Decisions never
wait for any of this: it runs in the background, so a consent or link given through another
replica applies to events flushed after it was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter

from service.events.records import Item, events_in
from service.logs import get_logger
from service.visitors.bots import BotJudge
from service.visitors.stores import Profile, StoreUnavailable, VisitorStore

__all__ = ["VisitorScreen"]

log = get_logger(__name__)

TARGETED: Final = '"targeted_delivery"]'  # how an outcome of a targeted delivery ends


class VisitorScreen:
    def __init__(
        self,
        store: VisitorStore,
        bots: BotJudge,
        registry: CollectorRegistry,
        *,
        consent_required: bool,
    ) -> None:
        self.store = store
        self.bots = bots
        self.consent_required = consent_required
        self.filtered = Counter(
            "flagpost_events_filtered",
            "Events not recorded on purpose: a bot's, or an experiment exposure without consent.",
            ["reason"],
            registry=registry,
        )
        self.unscreened = Counter(
            "flagpost_events_screened_without_store",
            "Events screened without the visitor store (it did not answer): none consented.",
            registry=registry,
        )

    async def screen(self, items: list[Item]) -> list[Item]:
        """``items`` as they are to be recorded, from one store read for all their visitors."""
        if not items:
            return items
        if not self.store.holds_visitors():  # nothing stored anywhere: no lookups to make
            return self._apply(items, {})
        try:
            profiles: dict[str, Profile] | None = await self.store.profiles(_visitors(items))
        except StoreUnavailable as error:
            log.warning("events_screened_without_store", error=error.message)
            profiles = None
        return self._apply(items, profiles)

    def screen_now(self, items: list[Item]) -> list[Item]:
        """``screen`` without I/O: the flusher is behind and a request must not wait."""
        if not self.store.holds_visitors():
            return self._apply(items, {})
        return self._apply(items, self.store.local_profiles(_visitors(items)))

    def _apply(self, items: list[Item], profiles: dict[str, Profile] | None) -> list[Item]:
        if profiles is None:
            self.unscreened.inc(sum(map(events_in, items)))
        kept: list[Item] = []
        bots = no_consent = 0
        verdicts: dict[str | None, bool] = {}  # a batch's requests share few user agents
        for item in items:
            if isinstance(item, dict):
                kind = item.get("kind")
                if kind not in _VISITORS_RECORDS:
                    kept.append(item)
                    continue
                profile = profiles.get(item["visitor_id"]) if profiles else None
                stored = profile.user_agent if profile else None
                if self.bots.is_bot(stored, item.get("user_agent")):
                    bots += 1
                    continue
                consented = self._consented(profile)
                if kind == "visitor_data" and not consented:  # kept for targeting, never sent
                    no_consent += 1
                    continue
                kept.append(self._conversion(item, profile, consented))
                continue
            agent = item[5]
            profile = profiles.get(item[1]) if profiles else None
            if profile is None:  # nothing stored: the header alone says whether it is a bot
                bot = verdicts.get(agent)
                if bot is None:
                    bot = verdicts[agent] = self.bots.is_bot(None, agent)
                if bot:
                    bots += events_in(item)
                    continue
                if not self.consent_required:
                    kept.append(item)  # the common case: nothing stored, nothing to change
                    continue
            elif self.bots.is_bot(profile.user_agent, agent):
                bots += events_in(item)
                continue
            seconds, visitor, number, exposed, context, agent, referer, revision = item
            who = profile.user_id if profile and profile.user_id else visitor
            if not self._consented(profile):
                outcomes = exposed if isinstance(exposed, tuple) else (exposed,)
                targeted = tuple(o for o in outcomes if o.endswith(TARGETED))
                no_consent += len(outcomes) - len(targeted)
                if targeted:
                    kept.append((seconds, who, number, targeted, {}, None, None, revision))
                continue
            if profile is not None and profile.attributes:
                context = {**_decoded(context), **profile.attributes}
            kept.append((seconds, who, number, exposed, context, agent, referer, revision))
        if bots:
            self.filtered.labels("bot").inc(bots)
        if no_consent:
            self.filtered.labels("no_consent").inc(no_consent)
        return kept

    def _consented(self, profile: Profile | None) -> bool:
        if not self.consent_required:
            return True
        return profile is not None and profile.consent is True

    @staticmethod
    def _conversion(record: dict[str, Any], profile: Profile | None, consented: bool) -> Item:
        """A conversion or visitor data record, under the user id, bare without consent."""
        changed = dict(record)
        if profile is not None and profile.user_id:
            changed["visitor_id"] = profile.user_id
        if not consented:
            changed.update(attributes=[], user_agent=None, referer=None)
        return changed


#: The built records that belong to a visitor (the screen's business).
_VISITORS_RECORDS: Final = frozenset({"conversion", "visitor_data"})


def _visitors(items: list[Item]) -> set[str]:
    found = set()
    for item in items:
        if isinstance(item, dict):
            if item.get("kind") in _VISITORS_RECORDS:
                found.add(item["visitor_id"])
        else:
            found.add(item[1])
    return found


def _decoded(context: Mapping[str, Any] | bytes) -> Mapping[str, Any]:
    if isinstance(context, bytes):
        decoded: Mapping[str, Any] = orjson.loads(context)
        return decoded
    return context
