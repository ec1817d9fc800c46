"""slimc's benchmark suite: slimc against onnxruntime (and OpenVINO when installed).

    python -m bench                      # the whole suite, 1 and 2 threads, batch 1 and 8
    python -m bench --quick              # few iterations: a smoke run
    python -m bench --models resnet18,bert --threads 1 --batch 1
    python -m bench my_model.onnx        # your own models, timed the same way
    python -m bench --list

Every model is built here (models.py; torch and transformers for the real networks,
onnx.helper for the rest), compiled with slimc and opened in onnxruntime (default graph
optimizations, intra-op threads = slimc's threads) from the same ONNX file. After warm-up the
runtimes are called in alternation in one process and timed with time.perf_counter
(timing.py); medians, the ratio slimc/onnxruntime and slimc's compile time are reported. Peak
memory of each runtime is measured in a process of its own (peakmem.py). The results go to a
JSON file and a PNG chart in bench/results/ (report.py), and a table is printed, ending with
the geometric mean of the ratios over the model families at batch 1 per thread count (the
micro benchmarks, the MLP and the denormal pair are reported but not averaged). A model slimc
cannot compile is an error row with the reason. Nothing here asserts anything: the numbers are
measurements, noisy when other work shares the cores.

bench/gemm_micro.py is a separate script (slimc's GEMM kernel vs numpy, one core).
"""
