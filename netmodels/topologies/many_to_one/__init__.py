"""The many-to-one topology: a hub relaying chat between many clients."""
