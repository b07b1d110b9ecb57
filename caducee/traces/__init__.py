"""The trace of actions per mailbox that an MSSanté operator keeps: who did what with which
mailbox, when, and what they were answered (messages sent or refused, deletions), for six
months (`trace_retention_days`), then purged by the job runner.

It is not the patient's access history (`history`, append-only and chained, kept for the
patient): it is the operator's record, read by the operator (`caducee traces show`) when a
mailbox's holder, a peer operator or an authority asks what happened.
"""
