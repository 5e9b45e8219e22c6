"""Benchmarks on this GPU (`ioaware bench`): a tool above the core, which never imports it.

attention.py  ioaware's attention against SDPA's backends, eager, Inductor and Flex
masks.py      masked and modified attention (`--mask KIND`) against Flex and a materialised mask
scan.py       the selective scan against an eager loop and compiled associative_scan
model.py      whole transformers models: eager, SDPA, torch.compile and ioaware, a step each
common.py     what they share: dtype names, the refusal without a GPU, error reporting
"""
