"""Starting campaigns whose time has come, from any number of processes at once.

Sending writes nothing per patient (`deliveries` files each inbox when it is opened), so
what runs in the background is short: a scheduled campaign whose `send_at` has passed, or
a start interrupted half way (a process killed between storing the message and sending),
is prepared again (`service.prepare`, safe to repeat: the message is stored once, and the
one transaction that marks it sent takes the campaign row `FOR UPDATE`, so two nodes
preparing the same campaign send it once).
"""

from __future__ import annotations

import asyncio
import logging

from caducee.campaigns.service import Campaigns

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, service: Campaigns) -> None:
        self.service = service

    async def work(self) -> int:
        """Send what is due; the number of patients the campaigns this call sent reach."""
        reached = 0
        for campaign_id in await self.service.due():
            try:
                sent = await self.service.prepare(campaign_id)
            except Exception:  # one campaign that cannot start must not stop the others
                log.exception("campaign %s could not start", campaign_id)
                continue
            if sent:
                reached += (await self.service.progress(campaign_id)).delivered
        return reached

    async def run_forever(self, poll_seconds: float) -> None:
        """The server's loop: due campaigns sent, then a pause."""
        while True:
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign runner: will try again")
            await asyncio.sleep(poll_seconds)
