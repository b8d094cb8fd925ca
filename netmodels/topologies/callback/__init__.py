"""The callback ("port 25") topology: the server dials clients back to deliver."""
