"""The health agenda: appointments (typed by the patient or sent by a professional as an
iCalendar invitation), the national prevention calendar, reminders and a calendar feed.

It owns its tables (`models`), reads the annuaire and the mailbox only through their
service modules, and hears about delivered mail through the gateway's post-delivery
consumers, which `server.py` connects: the gateway never imports it.
"""
