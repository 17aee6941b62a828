"""Sphinx configuration for the nmn_array documentation site (`make docs`).

The pages are the Markdown files beside this one (MyST); the API reference is generated from
the numpydoc docstrings (autodoc + napoleon); the examples run under sphinx.ext.doctest.
"""

import os

from sphinx.ext.doctest import DoctestDirective, TestcodeDirective

# autodoc imports the installed package (`make setup` installs this checkout, editable): the
# framework modules live in frameworks/ and are importable only as nmn_array.frameworks.
# Keras reads its backend once, at import; the framework pages and the API reference import
# keras, so fix it before anything does. TF and JAX: quiet logs, CPU only, like the tests.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import nmn_array  # noqa: E402  (after the environment above)

project = "nmn_array"
author = "nmn_array contributors"
copyright = "2026, nmn_array contributors"
release = version = nmn_array.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: `:::` fences too, and anchors for `page.md#heading` links (GitHub's slug rules, so
# the same links work on GitHub and on the site).
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# Every ```python block of the pages is run, and every ```pycon block is run with its shown
# output checked (see `setup` below). Plain fences keep the pages highlighted on GitHub too,
# and a new example cannot be added unchecked. Printed output of a ```python block goes in a
# ```{testoutput} block right after it; code shown but not run is ```{code-block} python.
myst_fence_as_directive = ["python", "pycon"]

# API reference: numpydoc docstrings through napoleon; signatures keep their annotations.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# Examples run in `sphinx-build -b doctest`, one namespace per page, in page order. The
# docstrings' own `>>>` examples are run by pytest --doctest-modules in the test
# suite, so the doctest builder does not run them a second time.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import os as _os
import tempfile as _tempfile

# Run each page like a script a reader would run: functions defined in it then belong to
# `__main__`, where inspect (hence TensorFlow's AutoGraph in `tf.function`) finds their source.
__name__ = "__main__"

# Examples that save a checkpoint write it into a scratch directory, not the checkout.
_doc_cwd = _os.getcwd()
_doc_tmp = _tempfile.TemporaryDirectory()
_os.chdir(_doc_tmp.name)
"""
doctest_global_cleanup = """
_os.chdir(_doc_cwd)
_doc_tmp.cleanup()
"""

html_theme = "furo"
html_title = f"nmn_array {release}"


def _fence_directive(base, name):
    """``base`` (a sphinx.ext.doctest directive) registered under a fence language."""

    class FenceDirective(base):
        def run(self):
            # The doctest builder and the highlighter key on the directive's own name.
            self.name = name
            return super().run()

    FenceDirective.__name__ = f"{name.capitalize()}Fence"
    return FenceDirective


def setup(app):
    app.add_directive("python", _fence_directive(TestcodeDirective, "testcode"))
    app.add_directive("pycon", _fence_directive(DoctestDirective, "doctest"))
