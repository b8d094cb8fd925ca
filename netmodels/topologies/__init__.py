"""
The built-in topologies, each a plugin written against the public runtime
exactly as a third party's is.
"""
