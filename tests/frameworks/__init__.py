"""Tests of the framework modules (nmn_array.frameworks.*) against nmn 0.3.5."""
