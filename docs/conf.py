# Sphinx configuration for the netmodels documentation.
#
# Build: make docs   (or: sphinx-build -W -b html docs docs/_build/html)
# Pages are reStructuredText; the wire protocol specification is kept as
# Markdown in protocol.md and shown by protocol.rst.

from __future__ import annotations

import os
import re
import sys

# Import netmodels from this checkout, whether or not it is installed.
sys.path.insert(0, os.path.abspath(".."))

import netmodels

project = "netmodels"
author = "the netmodels developers"
copyright = "the netmodels developers"
release = netmodels.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# autodoc: members in source order, with signatures as written.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Twisted's own docstrings (epytext) for methods netmodels overrides are not ours to show.
autodoc_inherit_docstrings = False
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}

pygments_style = "sphinx"
html_theme = "alabaster"
html_title = f"netmodels {release}"
html_theme_options = {
    "description": "Network topologies on Twisted, with keepalive and close reasons",
    "fixed_sidebar": True,
}
# The protocol specification is published next to the HTML as plain Markdown too.
html_extra_path = ["protocol.md"]


# zope.interface interfaces are not classes, so autodoc skips them. The
# ``zope-interface`` directive documents one from the interface itself: its
# docstring, attributes and method signatures, so the page never drifts from
# netmodels/interfaces.py.


def _interface_lines(dotted: str) -> list[str]:
    import importlib
    import inspect

    from zope.interface.interface import Method

    module_name, _, name = dotted.rpartition(".")
    interface = getattr(importlib.import_module(module_name), name)
    lines = [f".. py:class:: {name}", f"   :module: {module_name}", ""]
    lines += ["   " + line for line in inspect.cleandoc(interface.__doc__ or "").splitlines()]
    bases = [base.__name__ for base in interface.__bases__ if base.__name__ != "Interface"]
    if bases:
        lines += ["", f"   Extends {', '.join(bases)}."]
    for member_name in interface.names():
        member = interface[member_name]
        doc = inspect.cleandoc(member.getDoc() or "")
        if isinstance(member, Method):
            lines += ["", f"   .. py:method:: {member_name}{member.getSignatureString()}", ""]
        else:
            lines += ["", f"   .. py:attribute:: {member_name}", ""]
        lines += ["      " + line for line in doc.splitlines()]
    return lines


def _setup_interfaces(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class ZopeInterface(SphinxDirective):
        required_arguments = 1

        def run(self) -> list[nodes.Node]:
            container = nodes.section()
            container.document = self.state.document
            content = StringList(_interface_lines(self.arguments[0]), source=self.arguments[0])
            nested_parse_with_titles(self.state, content, container)
            return container.children

    app.add_directive("zope-interface", ZopeInterface)


def _name_interfaces_in_annotations() -> None:
    # An annotation that is an interface renders with the interface's repr,
    # "<InterfaceClass twisted.internet.interfaces.IReactorTime>". While the docs
    # build, make that repr the dotted name, so it reads (and links) as a type.
    from zope.interface.interface import InterfaceClass

    InterfaceClass.__repr__ = lambda self: f"{self.__module__}.{self.__name__}"


_BUILTIN_REPR = re.compile(r"<built-in function (\w+)>")
_ENUM_REPR = re.compile(r"<(\w+\.\w+): [^<>]*>")
_OTHER_REPR = re.compile(r"<[^<>]*>")


def _tidy_signature(app, what, name, obj, options, signature, return_annotation):
    # A default value whose repr is not Python ("<built-in function time>",
    # "<twisted.python.failure.Failure ...>") makes Sphinx fall back to a naive
    # parser that garbles the whole signature; show such defaults by name
    # (functions, enum members), or as "...".
    if signature:
        signature = _ENUM_REPR.sub(r"\1", _BUILTIN_REPR.sub(r"\1", signature))
        while _OTHER_REPR.search(signature):  # innermost first: "<function f.<lambda>>"
            signature = _OTHER_REPR.sub("...", signature)
    return signature, return_annotation


def setup(app):
    _setup_interfaces(app)
    _name_interfaces_in_annotations()
    app.connect("autodoc-process-signature", _tidy_signature)
