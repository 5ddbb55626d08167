"""Worker transports: the wire protocol over TCP (and later WebSocket), one Session each."""
