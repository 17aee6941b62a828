"""Stateful layers for each framework, thin shells over the pure functions of ``nmn_array``.

Import the module of your framework, e.g. ``from nmn_array.frameworks.torch import YatNMN``.
Nothing is imported here, so importing ``nmn_array.frameworks`` never loads a framework.
"""
