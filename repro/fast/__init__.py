"""Speed paths: the same functions as the plain reference, computed faster, mostly on CPUs.

Nothing here changes what the network computes; each is switched by a key of `[speed]` in the
config (repro/config.py, SpeedConfig) and held against its plain reference by a test:

    lrn.py         the fast LRN and same-map normalisation (hand-written backward, cheap passes,
                   cache-sized chunks on CPUs; speed.fast_lrn)            tests/test_lrn.py
    conv1_grad.py  conv1's weight gradient as a stride-1 convolution by space-to-depth
                   (speed.fast_conv1; CPUs only)                          tests/test_fast_conv1_grad.py
    linear.py      fc6-fc8 through oneDNN's matmul on CPUs (speed.fast_fc)  tests/test_speed.py
    fft_conv.py    stride-1 convolutions by Fourier transforms on CPUs without AVX-512:
                   conv2 (speed.fft_conv2), conv3-5 (speed.fft_conv3_5)    tests/test_fast_fft_conv.py
    threads.py     independent CPU work on one single-threaded worker per core (used by lrn.py)
                                                                          tests/test_fast_threads.py
    memory.py      glibc's malloc told to keep freed memory (speed.keep_freed_memory)
                                                                          tests/test_speed.py

The paper's own definitions live outside this package: the LRN formula in repro/lrn.py, the
layers in repro/model.py. benchmarks/ measures each speed path against its baseline.
"""
