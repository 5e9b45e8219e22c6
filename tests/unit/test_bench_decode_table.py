"""The decode bench's table: times launched back to back and replayed from a CUDA graph,
each against the fastest SDPA backend that passed its check at the same context."""

from ioaware.bench.decode import DecodeRow, render_decode_bench


def test_ratios_use_the_fastest_passing_sdpa_of_each_column():
    rows = [
        DecodeRow("sdpa[FLASH_ATTENTION]", 4096, True, 1e-3, 120.0, 0.3, "", 80.0, 0.5),
        DecodeRow("sdpa[CUDNN_ATTENTION]", 4096, True, 1e-3, 100.0, 0.4, "", 60.0, 0.7),
        DecodeRow("sdpa[EFFICIENT_ATTENTION]", 4096, False, 1.0, 10.0, 4.0, "", 5.0, 8.0),
        DecodeRow("ioaware decode", 4096, True, 2e-3, 130.0, 0.35, "", 48.0, 0.9),
        DecodeRow("flex (decoding)", 4096, None, None, None, None, "needs a newer torch"),
    ]
    text = render_decode_bench(rows, "decode")
    line = next(x for x in text.splitlines() if "ioaware decode" in x)
    # launched: cuDNN's 100 µs / 130 µs; graph: cuDNN's 60 µs / 48 µs (the failed
    # efficient row, fastest on paper, is not a peer)
    assert "0.77x" in line and "1.25x" in line and "48.0" in line and "90%" in line
    assert "flex (decoding) (N=4096): needs a newer torch" in text
