"""What the performer tests of the torch, NNX and Linen modules share (issue 15)."""

from __future__ import annotations

#: embed_dim, heads, sequence length, batch; head size
E, H, L, B = 8, 2, 7, 2
D = E // H
KINDS = ["slay", "maclaurin", "radial"]
CLASSES = ["mha", "rotary"]
#: small feature counts keep the tests fast (the modules pass them to the builders)
SMALL = dict(performer_num_features=32, performer_sketch_m=8, performer_radial_dim=8)
#: float64, module against performer_attention on its own heads
RTOL = 1e-12
#: float64, jit against eager: XLA fuses and reorders the compiled graph
JIT_RTOL = 1e-10
#: constructor arguments a performer module refuses, and the name its error must say
BAD_ARGUMENTS = [
    ({"performer_kind": "foo"}, "performer_kind"),
    ({"num_anchor_features": 0}, "num_anchor_features"),
    ({"num_prf_features": 0}, "num_prf_features"),
    ({"num_quad_nodes": 0}, "num_quad_nodes"),
    ({"performer_kind": "maclaurin", "performer_num_features": 0}, "performer_num_features"),
    ({"performer_kind": "maclaurin", "performer_nmax": 0}, "performer_nmax"),
    ({"performer_kind": "radial", "performer_sketch_m": 0}, "performer_sketch_m"),
    ({"performer_kind": "radial", "performer_num_radial": 0}, "performer_num_radial"),
    ({"performer_kind": "radial", "performer_radial_dim": 0}, "performer_radial_dim"),
    ({"performer_bias": -1.0}, "performer_bias"),
    ({"window": (2, 0)}, "window"),
]
