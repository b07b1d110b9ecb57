"""Pure decision rules: who may write to whom, in which conversation. No I/O."""

from caducee.policies.chain import CHAIN, RCPT_CHAIN, decide
from caducee.policies.facts import (
    Action,
    Conversation,
    ConversationState,
    Decision,
    Facts,
    Message,
    Party,
    PartyKind,
)

__all__ = [
    "CHAIN",
    "RCPT_CHAIN",
    "decide",
    "Action",
    "Conversation",
    "ConversationState",
    "Decision",
    "Facts",
    "Message",
    "Party",
    "PartyKind",
]
