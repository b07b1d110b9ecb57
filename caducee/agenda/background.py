"""The agenda's work in a serving process: the reminder worker and the daily job, each a
loop that survives a failing pass. Every process runs both; the leases share the work."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.agenda.daily import DailyJob, purge
from caducee.agenda.reminders import ReminderWorker
from caducee.agenda.schedule import load_table
from caducee.agenda.times import zone
from caducee.config import Settings
from caducee.notify.notifier import Notifier

log = logging.getLogger(__name__)
DAILY_LOOK_SECONDS = 600.0


def reminder_worker(engine: AsyncEngine, settings: Settings, notifier: Notifier) -> ReminderWorker:
    return ReminderWorker(engine, notifier, load_table(settings.agenda_prevention_table or None), webmail_url=settings.webmail_url)


async def daily_forever(engine: AsyncEngine, settings: Settings) -> None:
    """Each day from `agenda_daily_hour` (Paris), do the day's chunks not yet done by anyone;
    a day already done costs one query per look."""
    while True:
        try:
            now = datetime.now(UTC)
            paris = now.astimezone(zone("Europe/Paris"))
            if paris.hour >= settings.agenda_daily_hour:
                job = DailyJob(engine, load_table(settings.agenda_prevention_table or None))
                report = await job.run(paris.date())
                if report.chunks:
                    log.info("daily agenda job for %s: %d patients, %d reminders queued", report.day, report.patients, report.queued)
                await purge(engine, paris.date() - timedelta(days=30))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("daily agenda job failed")
        await asyncio.sleep(DAILY_LOOK_SECONDS)
