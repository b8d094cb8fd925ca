"""The peer-to-peer topology: a mesh with membership, gossip and broadcast."""
