"""Transports: TCP (errno capture, kernel keepalive) and UDP sessions."""
