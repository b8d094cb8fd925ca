"""
The sans-IO core: frames, HELLO, close reasons, keepalive decisions, backoff,
datagram codecs and the reliable channel. Nothing here imports Twisted (a test
enforces it); every part is fed bytes and time and returns what to do.
"""
