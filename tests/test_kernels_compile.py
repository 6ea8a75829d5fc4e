"""Every kernel type-checks and lowers to LLVM IR for the real CUDA target (the simulator checks no types).

The simulator runs kernels as Python, so code that the real compiler rejects (type unification,
unsupported calls) would pass every simulator test. This compiles each kernel with Numba's CUDA
front end for compute capability 9.0 in a process without the simulator. No GPU or NVVM is
needed up to LLVM IR; the only stand-in is the "current device" Numba asks for when it compiles a
device-function call, answered with a CC 9.0 description.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import types as pytypes
    import numpy as np
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
    from numba import types
    from numba.cuda import compiler
    from tensorai.kernels import gemm, layout, reduce, rows

    def lower(kernel, signature):
        result = compiler.compile_cuda(kernel.py_func, types.void, signature, cc=(9, 0))
        assert "define" in result.library.get_llvm_str()

    for dtype, element in ((np.float32, types.float32), (np.float64, types.float64)):
        array = element[::1]
        lower(gemm.build_gemm_kernel(np.dtype(dtype), gemm.GPU_CONFIG), (array,) * 4 + (types.int64,) * 15)
        row_config = (rows.GPU_ROW_THREADS, rows.GPU_ROW_CACHE)
        lower(rows._softmax_kernel(np.dtype(dtype), *row_config), (array, array) + (types.int64,) * 3)
        lower(
            rows._layernorm_kernel(np.dtype(dtype), *row_config),
            (array,) * 4 + (types.int64, types.int64, types.float64, types.boolean),
        )
        lower(reduce._reduce_kernel(np.dtype(dtype), rows.GPU_ROW_THREADS), (array, array) + (types.int64,) * 5)
        lower(layout._permute_kernel(np.dtype(dtype)), (array, array, types.int64[::1], types.int64[::1], types.int64))
    print("lowered")
    """
)


def test_every_kernel_compiles_for_a_real_gpu_not_only_the_simulator() -> None:
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "lowered" in done.stdout, done.stderr[-4000:]
