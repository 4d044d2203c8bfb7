"""The accuracy gate's verdict: counted in images, exact at the limit."""

from edgecls.converters.verify import gate_passes


def test_gate_counts_images_so_a_loss_exactly_at_the_limit_passes():
    assert 100 * (0.99 - 0.98) > 1.0  # what a float comparison of accuracies would have refused
    assert gate_passes(99, 98, 100, 1.0)  # 1 image of 100 is 1 point
    assert gate_passes(1, 0, 320, 0.3125)  # 1 image of 320 is 0.3125 points
    assert not gate_passes(99, 97, 100, 1.0) and not gate_passes(2, 0, 320, 0.3125)
    assert gate_passes(50, 50, 100, 0.0) and not gate_passes(50, 49, 100, 0.0)
