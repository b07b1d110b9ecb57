"""Pure decision rules: who may write to whom, in which conversation. No I/O."""

from caducee.policies.chain import CHAIN, RCPT_CHAIN, SENDER_CHAIN, decide, decide_sender
from caducee.policies.facts import (
    Action,
    Channel,
    Conversation,
    ConversationState,
    Decision,
    Facts,
    Message,
    Party,
    PartyKind,
    SenderFacts,
    refuse,
)
from caducee.policies.parties import kind_of

__all__ = [
    "CHAIN",
    "RCPT_CHAIN",
    "SENDER_CHAIN",
    "decide",
    "decide_sender",
    "Action",
    "Channel",
    "Conversation",
    "ConversationState",
    "Decision",
    "Facts",
    "Message",
    "Party",
    "PartyKind",
    "SenderFacts",
    "refuse",
    "kind_of",
]
