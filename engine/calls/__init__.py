"""The call layer: calls (SIP, browser, internal), their events and media, conferences and the media graph."""
