"""Sans-IO SIP: messages, URIs, SDP, digest auth, transactions and dialogs.

Nothing in this package opens a socket, reads a clock or imports asyncio:
objects are fed bytes and the current time, and return events and bytes.
"""
