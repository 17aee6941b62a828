"""The ``nmn-array demo``: activation-free yat networks on real data, in any framework.

The demo trains four small classifiers on scikit-learn's bundled 8x8 digits (offline):
a yat MLP and a yat CNN with no activation function anywhere, each beside a ReLU baseline of
the same size, built from the layers of ``nmn_array.frameworks.<fw>`` (the yat arithmetic
lives only in :mod:`nmn_array`; nothing here re-implements it).

Modules
-------
registry
    Which frameworks the demo knows, how to tell whether they are installed (without
    importing them), and the pip extra that provides each.
data
    The digits data set and its fixed stratified train/test split.
train
    The framework-neutral training loop, progress bar and results.
torch_models, nnx_models, keras_models, tf_models
    The four models and one training step per framework.
plot
    The PNG: learning curves and the first yat layer's neurons as 8x8 images.
xor
    A single yat neuron separates XOR; a single linear neuron cannot.
associative_memory
    A HAMUX energy network that stores digits through a yat hypersynapse and restores
    corrupted ones by descending its energy, beside HAMUX's dense synapse
    (``nmn-array demo hamux``; docs/hamux.md).
run
    The command itself: XOR section, training, table, figure.
"""
