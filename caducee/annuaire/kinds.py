"""The annuaire's vocabularies, for other components to name without reaching its tables."""

from __future__ import annotations

import enum


class MailboxType(str, enum.Enum):
    """BAL types of the national directory, plus PAT for the patient mailboxes we serve."""

    PER = "PER"  # personal mailbox of a professional
    ORG = "ORG"  # organisation mailbox (a hospital service, a pharmacy)
    APP = "APP"  # application mailbox (software, CNAM campaigns)
    CAB = "CAB"  # practice (cabinet) mailbox
    PAT = "PAT"  # a patient's mailbox on the patient domain; never in the public directory


class PatientStatus(str, enum.Enum):
    CREATED = "created"  # profile exists, not activated yet: receives mail, shown at activation
    ACTIVATED = "activated"
    OPPOSED = "opposed"  # the patient opposed the creation of the profile: receives nothing
    CLOSED = "closed"  # the profile was closed: receives nothing
